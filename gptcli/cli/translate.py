"""`gptcli translate` (issue 7; being built)."""

from gptcli.cli import options as opt


def translate(model: opt.Model = None) -> None:
    """Translate text line by line."""
    from gptcli.errors import UsageError

    raise UsageError("translate is not available yet.")
