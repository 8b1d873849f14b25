"""`gptcli completion SHELL`: print a static completion script for bash, zsh or fish.

Static scripts (generated from the command tree, committed under completions/)
complete without starting Python at all, so tab completion is instant.

The command walks the app it belongs to, so app.py hands the app in (`command_for(app)`);
this module never imports app.py, which imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer


def command_for(app: typer.Typer) -> Callable[..., None]:
    """The `completion` command for `app`."""

    def completion(
        shell: Annotated[str, typer.Argument(help="bash, zsh or fish.", show_default=False)],
    ) -> None:
        """Print the shell completion script. Example: gptcli completion bash > ~/.local/share/bash-completion/completions/gptcli"""
        from gptcli import completions
        from gptcli.cli.output import Output
        from gptcli.errors import UsageError

        if shell not in completions.SHELLS:
            raise UsageError(f"unknown shell '{shell}'.", hint="Use bash, zsh or fish.")
        Output().text(completions.render(app, shell), flush=False)

    return completion
