"""`gptcli quantize`: write a model folder with int8 or int4 weights that loads with --model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from gptcli.cli import options as opt


def quantize(
    model: Annotated[
        Optional[str],
        typer.Argument(
            help="The float model: bundled name, local folder or Hub id. (default: GPTCLI_MODEL, else the bundled model)",
            show_default=False,
        ),
    ] = None,
    to: Annotated[
        Optional[str],
        typer.Option("--to", help="int8 (per channel) or int4 (per group of inputs).", show_default=False),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Folder to write (must not exist or be empty).", show_default=False),
    ] = None,
    group_size: Annotated[
        Optional[int],
        typer.Option(
            "--group-size", help="int4: inputs per scale, 32, 64, 128 or 256. (default: 64)", show_default=False
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --out model folder (one holding config.json).")
    ] = False,
    as_json: opt.Json = False,
    allow_pickle: opt.AllowPickle = False,
    trust_remote_code: opt.TrustRemoteCode = False,
) -> None:
    """Quantize a model's linear layers to int8 or int4 and write a folder that `--model DIR` loads.

    The folder holds safetensors weights (integers and scales), the config with its
    quantization_config, and the tokenizer. It runs with gptcli on the CPU. Examples:
    gptcli quantize tinystories --to int4 --out stories-int4 · gptcli generate -m stories-int4 "Once"
    """
    from gptcli import console
    from gptcli.errors import UsageError
    from gptcli.fileio import json_line
    from gptcli.quantize import INT4_GROUP_SIZE, parse_scheme

    scheme = parse_scheme(to or "", flag="--to")
    if scheme is None:
        raise UsageError("--to is required.", hint="Pass --to int8 or --to int4.")
    if out is None:
        raise UsageError("--out is required.", hint="Pass the folder to write: --out my-model-int8")
    if group_size is not None:
        if scheme != "int4":
            raise UsageError("--group-size applies to --to int4 only.")
        if group_size not in (32, 64, 128, 256):
            raise UsageError(f"--group-size must be 32, 64, 128 or 256 (got {group_size}).")
    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' is a file; pass a folder.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(
                f"--out '{out}' is not empty.", hint="Pass --overwrite to replace the model there, or another --out."
            )
        if not (out / "config.json").is_file():
            raise UsageError(f"--overwrite: '{out}' holds no config.json (not a model folder); refusing to replace it.")
    from gptcli.loading import folder_quantization, load_model, resolve_source
    from gptcli.runtime import resolve_runtime

    source = resolve_source(model, allow_pickle=allow_pickle)
    if out.resolve() == source.path.resolve():
        raise UsageError(f"--out '{out}' is the model folder itself; write the quantized model elsewhere.")
    if folder_quantization(source.path):
        raise UsageError(f"{source.spec} is quantized already; quantize the float model it came from.")
    # Scales are computed from float32 weights: a bfloat16 upcast is exact.
    runtime = resolve_runtime("cpu", "float32")
    lm = load_model(model, runtime, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)

    from gptcli.quantize import write_quantized

    report = write_quantized(lm, scheme, out, group_size or INT4_GROUP_SIZE)
    record = {
        "model": lm.name,
        "out": str(out),
        "scheme": scheme,
        "bits": 8 if scheme == "int8" else 4,
        "group_size": (group_size or INT4_GROUP_SIZE) if scheme == "int4" else None,
        "layers": report.layers,
        "bytes": report.quant_bytes,
        "float32_bytes": report.float_bytes,
        "modules_not_quantized": report.not_quantized,
    }
    if as_json:
        console.write(json_line(record) + "\n")
        return
    from gptcli.cli.output import format_bytes

    console.write(
        f"{out}: {scheme} weights for {report.layers} layers, {format_bytes(report.quant_bytes)} "
        f"(float32: {format_bytes(report.float_bytes)})\n"
    )
