"""`gptcli eval`: how well a model predicts text.

- windows.py    which tokens each forward pass scores (lm-evaluation-harness rolling windows; pure Python)
- perplexity.py tokenize documents, score the windows in batches, add up per document
(Records come from `DocScore.to_record`/`ModelScore.to_record`; the table and progress are drawn
by gptcli/cli/evaluate.py through gptcli/cli/output.py.)

Translation metrics (BLEU/chrF) are not here: `gptcli translate --references`
computes them (gptcli/translation/scoring.py).
"""

from gptcli.evaluation.perplexity import DocScore, ModelScore, evaluate_model, prepare_documents

__all__ = ["DocScore", "ModelScore", "evaluate_model", "prepare_documents"]
