"""`gptcli eval`: how well a model predicts text.

- windows.py    which tokens each forward pass scores (lm-evaluation-harness rolling windows; pure Python)
- perplexity.py tokenize documents, score the windows in batches, add up per document
- report.py     JSON records, the comparison table and the progress display

Translation metrics (BLEU/chrF for `gptcli eval --translation`) are the
translate command's (gptcli/translation/); `gptcli eval` dispatches to them
before the perplexity path and they can reuse report.py's plain/Rich table.
"""

from gptcli.evaluation.perplexity import DocScore, ModelScore, evaluate_model, prepare_documents

__all__ = ["DocScore", "ModelScore", "evaluate_model", "prepare_documents"]
