"""`gptcli eval`: how well a model predicts text.

- windows.py    which tokens each forward pass scores (sliding window; pure Python)
- perplexity.py tokenize documents, score the windows in batches, add up per document
- report.py     JSON records, the comparison table and the progress display

Translation metrics (BLEU/chrF for `gptcli eval --translation`) belong in a
sibling module `translation.py`; the command dispatches to it before the
perplexity path, and can reuse report.py's table.
"""

from gptcli.evaluation.perplexity import DocScore, ModelScore, evaluate_model, prepare_documents

__all__ = ["DocScore", "ModelScore", "evaluate_model", "prepare_documents"]
