"""`gptcli chat` (issue 6; being built)."""

from gptcli.cli import options as opt


def chat(model: opt.Model = None) -> None:
    """Chat with a model in the terminal or from a script."""
    from gptcli.errors import UsageError

    raise UsageError("chat is not available yet.")
