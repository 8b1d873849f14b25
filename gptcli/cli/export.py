"""`gptcli export`: write a model in another program's format (GGUF for llama.cpp and ollama)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from gptcli.cli import options as opt


def export(
    model: Annotated[
        Optional[str],
        typer.Argument(
            help="Bundled model name, local Hugging Face folder, or Hub id (as --model). Default: the bundled model.",
            show_default=False,
        ),
    ] = None,
    to: Annotated[
        Optional[str], typer.Option("--to", help="Format to write: gguf (llama.cpp, ollama).", show_default=False)
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="The file to write, e.g. model.gguf.", show_default=False, dir_okay=False),
    ] = None,
    outtype: Annotated[
        str,
        typer.Option(
            "--outtype",
            help="Weight type: f32, f16, bf16, q8_0, or q4_0 (q4_0 needs llama-cpp-python). "
            "Vectors and norms stay f32.",
        ),
    ] = "f16",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
    as_json: opt.Json = False,
    threads: opt.Threads = None,
    allow_pickle: opt.AllowPickle = False,
    trust_remote_code: opt.TrustRemoteCode = False,
) -> None:
    """Export a model to one GGUF file that llama.cpp and ollama run, tokenizer included.

    GPT-2 and Llama-family (Llama, Mistral, Qwen2) models with byte-level BPE tokenizers, such as
    every model `gptcli train` makes with its default tokenizer. Examples:
    gptcli export run/final --to gguf --out story.gguf · gptcli export tinystories --to gguf --out s.gguf --outtype q8_0
    """
    from gptcli.cli.output import Output, format_bytes
    from gptcli.errors import UsageError
    from gptcli.export_gguf import EXPORT_FORMATS, check_outtype, check_target, export_gguf

    if to is None:
        raise UsageError("--to is required.", hint="Pass --to gguf.")
    if to.strip().lower() not in EXPORT_FORMATS:
        raise UsageError(f"--to must be one of {', '.join(EXPORT_FORMATS)} (got '{to}').")
    if out is None:
        raise UsageError("--out is required.", hint="Pass --out FILE.gguf.")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1 (got {threads}).")
    # Checked before any model loads: a wrong flag fails at once.
    outtype = check_outtype(outtype)
    check_target(out, overwrite)

    output = Output(as_json=as_json)
    result = export_gguf(
        model,
        out,
        outtype,
        overwrite=overwrite,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        threads=threads,
    )
    for warning in result.warnings:
        output.warn(warning)
    if as_json:
        output.record(result.to_record())
        return
    output.text(
        f"{result.path}: GGUF {result.architecture}, {result.outtype}, {result.tensors} tensors, "
        f"{result.parameters:,} parameters, {format_bytes(result.bytes)} ({result.seconds:.1f} s)\n"
    )
