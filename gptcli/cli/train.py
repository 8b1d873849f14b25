"""`gptcli train` and `gptcli finetune` (issue 3; being built)."""

from gptcli.cli import options as opt


def train(model: opt.Model = None) -> None:
    """Pretrain a model from scratch."""
    from gptcli.errors import UsageError

    raise UsageError("train is not available yet.")


def finetune(model: opt.Model = None) -> None:
    """Finetune a model."""
    from gptcli.errors import UsageError

    raise UsageError("finetune is not available yet.")
