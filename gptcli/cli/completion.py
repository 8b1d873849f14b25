"""`gptcli completion SHELL`: print a static completion script for bash, zsh or fish.

Static scripts (generated from the command tree, committed under completions/)
complete without starting Python at all, so tab completion is instant.
"""

from __future__ import annotations

from typing import Annotated

import typer


def completion(
    shell: Annotated[str, typer.Argument(help="bash, zsh or fish.", show_default=False)],
) -> None:
    """Print the shell completion script. Example: gptcli completion bash > ~/.local/share/bash-completion/completions/gptcli"""
    from gptcli import completions, console
    from gptcli.errors import UsageError

    if shell not in completions.SHELLS:
        raise UsageError(f"unknown shell '{shell}'.", hint="Use bash, zsh or fish.")
    from gptcli.cli.app import app

    console.write(completions.render(app, shell), flush=False)
