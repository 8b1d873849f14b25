"""`gptcli eval` (issue 5; being built)."""

from gptcli.cli import options as opt


def evaluate(model: opt.Model = None) -> None:
    """Measure how well a model predicts text."""
    from gptcli.errors import UsageError

    raise UsageError("eval is not available yet.")
