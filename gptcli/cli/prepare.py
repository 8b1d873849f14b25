"""`gptcli prepare`: tokenize a corpus into the token cache before training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from gptcli.cli import options as opt


def prepare(
    data: Annotated[
        Optional[list[str]],
        typer.Argument(help="Text files or folders (.txt, .jsonl, .json, .csv, .tsv, .parquet).", show_default=False),
    ] = None,
    val_data: Annotated[
        Optional[list[str]],
        typer.Option("--val-data", help="Validation files to prepare too. Repeatable.", show_default=False),
    ] = None,
    text_field: Annotated[
        str, typer.Option("--text-field", help="Field/column with the text in .jsonl/.json/.csv/.parquet.")
    ] = "text",
    cache: Annotated[
        Optional[Path],
        typer.Option(
            "--cache",
            help="Token cache folder (give train the same --cache). (default: $GPTCLI_CACHE_DIR or ~/.cache/gptcli/tokens)",
            show_default=False,
        ),
    ] = None,
    tokenizer: Annotated[
        Optional[str],
        typer.Option(
            "--tokenizer",
            help="Tokenize with this tokenizer (folder or Hub id) instead of training one.",
            show_default=False,
        ),
    ] = None,
    tokenizer_type: Annotated[
        str, typer.Option("--tokenizer-type", help="bpe, char or bytes: the tokenizer train would make.")
    ] = "bpe",
    vocab_size: Annotated[
        int, typer.Option("--vocab-size", help="BPE vocabulary size, special tokens included.")
    ] = 8192,
    tokenizer_sample_mb: Annotated[
        float,
        typer.Option("--tokenizer-sample-mb", help="Train the BPE tokenizer on the first this many MB of documents."),
    ] = 200.0,
    as_json: opt.Json = False,
    trust_remote_code: opt.TrustRemoteCode = False,
) -> None:
    """Tokenize a corpus once into the token cache, so that train (every run, --resume, every torchrun rank) starts at once.

    Give train the same data, tokenizer options and --cache. Examples:
    gptcli prepare corpus/ --val-data val.txt · gptcli train corpus/ --val-data val.txt --out run ·
    gptcli prepare big.txt --cache /shared/tokens --tokenizer ./tok
    """
    from gptcli import console
    from gptcli.errors import UsageError
    from gptcli.tokcache import prepare as run_prepare
    from gptcli.training.settings import TOKENIZER_TYPES

    if not data:
        raise UsageError("no data given.", hint="Pass one or more files or folders: gptcli prepare corpus.txt")
    if tokenizer_type not in TOKENIZER_TYPES:
        raise UsageError(f"--tokenizer-type must be one of {', '.join(TOKENIZER_TYPES)} (got '{tokenizer_type}').")
    if not 2 <= vocab_size <= 1_000_000:
        raise UsageError(f"--vocab-size must be between 2 and 1,000,000 (got {vocab_size}).")
    if not tokenizer_sample_mb > 0:
        raise UsageError(f"--tokenizer-sample-mb must be positive (got {tokenizer_sample_mb}).")
    summary = run_prepare(
        list(data),
        val_data=list(val_data or []),
        text_field=text_field,
        tokenizer=tokenizer,
        tokenizer_type=tokenizer_type,
        vocab_size=vocab_size,
        tokenizer_sample_mb=tokenizer_sample_mb,
        cache=str(cache) if cache else None,
        trust_remote_code=trust_remote_code,
    )
    if as_json:
        console.write(json.dumps(summary) + "\n")
        return
    for key in ("data", "val_data"):
        if key in summary:
            d = summary[key]
            console.write(
                f"{key}: {d['documents']:,} documents, {d['tokens']:,} tokens ({d['dtype']}) "
                f"in {d['folder']} ({d['seconds']:.1f} s)\n"
            )
