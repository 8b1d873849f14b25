"""`gptcli models`: list the models bundled in the package."""

from __future__ import annotations

from gptcli.cli import options as opt


def models(as_json: opt.Json = False) -> None:
    """List the models bundled with gptcli (they work offline)."""
    from gptcli import bundled
    from gptcli.cli.output import Output

    out = Output(as_json=as_json)
    cards = [bundled.card(n) for n in bundled.names()]
    if as_json:
        for c in cards:
            out.record(c, flush=False)
        return
    if not cards:
        out.note("No bundled models are installed.")
        return
    for c in cards:
        mark = " (default)" if c["default"] else ""
        size = c["size_bytes"] / 1e6
        out.text(f"{c['name']}{mark}\t{size:.1f} MB\t{c.get('description', '')}\n", flush=False)
        if c.get("trained_on"):
            out.text(f"\ttrained on: {c['trained_on']}\n", flush=False)
