"""`gptcli eval`: perplexity and bits per byte of one or more models on the same text."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from gptcli.cli import options as opt

if TYPE_CHECKING:
    from gptcli.data import Document
    from gptcli.evaluation import ModelScore

EVAL_PANEL = "Evaluation"


def evaluate(
    files: Annotated[
        Optional[list[Path]],
        typer.Argument(
            help="Text files (.txt, .jsonl, .csv, .tsv, .parquet, .json) or folders; '-' or piped stdin reads stdin.",
            show_default=False,
        ),
    ] = None,
    models: Annotated[
        Optional[list[str]],
        typer.Option(
            "--model",
            "-m",
            help="Bundled model name, local Hugging Face folder, Hub id, or openai:NAME (a model on an OpenAI-compatible server that returns prompt log-probabilities; see --api-base). Repeat to compare models. Default: $GPTCLI_MODEL, else the bundled model.",
            rich_help_panel=opt.MODEL_PANEL,
            show_default=False,
        ),
    ] = None,
    text_field: Annotated[
        str, typer.Option("--text-field", help="Field or column holding the text in .jsonl/.csv/.parquet/.json.")
    ] = "text",
    stride: Annotated[
        Optional[int],
        typer.Option(
            "--stride",
            help="New tokens scored per window; the rest of the window is earlier text. (default: the window length, --context)",
            rich_help_panel=EVAL_PANEL,
            show_default=False,
        ),
    ] = None,
    context: Annotated[
        Optional[int],
        typer.Option(
            "--context",
            help="Tokens per window, at most the model's. (default: the model's context, at most 4096)",
            rich_help_panel=EVAL_PANEL,
            show_default=False,
        ),
    ] = None,
    concat: Annotated[
        bool,
        typer.Option(
            "--concat",
            help="Score all documents as one text (joined by a blank line) instead of independently.",
            rich_help_panel=EVAL_PANEL,
        ),
    ] = False,
    max_docs: Annotated[
        Optional[int],
        typer.Option(
            "--max-docs", help="Evaluate only the first N documents.", rich_help_panel=EVAL_PANEL, show_default=False
        ),
    ] = None,
    max_tokens: Annotated[
        Optional[int],
        typer.Option(
            "--max-tokens",
            help="Evaluate only the first N tokens (per model; the document that crosses the limit is cut).",
            rich_help_panel=EVAL_PANEL,
            show_default=False,
        ),
    ] = None,
    cache: Annotated[
        Optional[Path],
        typer.Option(
            "--cache",
            help="Token cache folder: the files are tokenized once into it (or read back from it, e.g. after "
            "`gptcli prepare`/`gptcli train` with the same tokenizer). Without it, a valid entry in the default "
            "cache is used, and inputs of 64 MB or more are cached there. (default: $GPTCLI_CACHE_DIR or "
            "~/.cache/gptcli/tokens)",
            rich_help_panel=EVAL_PANEL,
            show_default=False,
        ),
    ] = None,
    per_doc: Annotated[
        bool,
        typer.Option(
            "--per-doc",
            help="JSON Lines on stdout, one record per document as it is scored (the summary table goes to stderr).",
            rich_help_panel=opt.OUTPUT_PANEL,
        ),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="The summary as JSON on stdout, one line per model.", rich_help_panel=opt.OUTPUT_PANEL
        ),
    ] = False,
    batch_size: opt.EvalBatchSize = None,
    seed: opt.Seed = None,
    api_base: opt.ApiBase = None,
    timeout: opt.Timeout = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    threads: opt.Threads = None,
    quantize: opt.Quantize = None,
    allow_pickle: opt.AllowPickle = False,
    trust_remote_code: opt.TrustRemoteCode = False,
) -> None:
    """Measure how well models predict text: NLL per token, perplexity, bits per byte.

    Examples: gptcli eval story.txt · cat book.txt | gptcli eval --stride 256 ·
    gptcli eval data.jsonl -m tinystories -m ./my-model --json
    """
    from gptcli.cli.output import Output
    from gptcli.data import load_documents
    from gptcli.errors import UsageError
    from gptcli.inputs import stdin_is_tty
    from gptcli.quantize import parse_scheme
    from gptcli.runtime import check_options

    # Everything the user typed is checked before any model loads.
    check_options(device, dtype, threads)
    quant = parse_scheme(quantize)
    for name, value in (
        ("--batch-size", batch_size),
        ("--stride", stride),
        ("--context", context),
        ("--max-docs", max_docs),
        ("--max-tokens", max_tokens),
    ):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1 (got {value}).")
    if context is not None and context < 2:
        raise UsageError("--context must be at least 2: a token is scored from the ones before it.")
    if stride is not None and context is not None and stride > context:
        raise UsageError(f"--stride {stride} is longer than --context {context}.")
    if max_tokens is not None and max_tokens < 2:
        raise UsageError("--max-tokens must be at least 2: a token is scored from the ones before it.")
    sources = [str(f) for f in files or []]
    if not sources:
        if stdin_is_tty():
            raise UsageError(
                "no text to evaluate.", hint="Pass files or folders, or pipe text in: cat book.txt | gptcli eval"
            )
        sources = ["-"]
    if sources.count("-") > 1:
        raise UsageError("'-' (stdin) can be given only once.")
    documents: Iterable[Document]
    if "-" in sources or concat:
        documents = load_documents(sources, text_field=text_field, max_docs=max_docs)
    else:  # read lazily: --max-tokens reads only the documents it scores
        from gptcli.data import DocumentStream

        documents = DocumentStream(sources, text_field, max_docs)
    if not any(d.has_text() for d in documents):
        where = "stdin" if sources == ["-"] else ", ".join(sources)
        raise UsageError(f"no text to evaluate in {where}.")

    from gptcli.evaluation import evaluate_model, prepare_documents
    from gptcli.remote import RemoteModel, is_remote
    from gptcli.runtime import seed_everything

    # None: the default model ($GPTCLI_MODEL, which may be remote, else the bundled one).
    default = os.environ.get("GPTCLI_MODEL") or None
    specs: list[str | None] = list(models) if models else [default]
    remote = next((spec for spec in specs if is_remote(spec)), None)
    mixed = remote is not None and not all(is_remote(spec) for spec in specs)
    if remote is not None and not mixed and (context is not None or stride is not None):
        raise UsageError(
            f"--{'context' if context is not None else 'stride'} needs the model's tokenizer to cut windows; "
            f"{remote} is scored by its server, each document whole.",
            hint="Drop it; a document must then fit the server's context.",
        )

    out = Output(as_json=as_json)
    documents = prepare_documents(documents, concat)
    seed_everything(seed)
    scores = []
    local_options = dict(
        device=device,
        dtype=dtype,
        threads=threads,
        quantize=quant,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
    )
    for spec in specs:
        # Comparing local and remote models: each kind gets its own options, windows included (with
        # one kind only, the other kind's options are usage errors).
        mine = not mixed or is_remote(spec)
        lm = out.open_backend(
            spec,
            api_base=api_base if mine else None,
            timeout=timeout if mine else None,
            **(local_options if not mixed or not is_remote(spec) else {}),
        )
        sink = _PerDoc(out, lm.name) if per_doc else None
        with out.progress(f"eval {lm.name}") as bar:
            if isinstance(lm, RemoteModel):
                from gptcli.evaluation.remote import evaluate_remote

                score = evaluate_remote(
                    lm,
                    documents,
                    batch_size=batch_size or opt.EVAL_BATCH_SIZE,
                    max_tokens=max_tokens,
                    progress=bar.advance,
                    on_doc=sink.add if sink is not None else None,
                )
            else:
                entry = None
                if "-" not in sources and not concat:
                    entry = _token_cache(lm.tokenizer, sources, documents, text_field, cache, max_tokens or max_docs)
                score = evaluate_model(
                    lm,
                    documents,
                    stride=stride,
                    context=context,
                    batch_size=batch_size or opt.EVAL_BATCH_SIZE,
                    max_tokens=max_tokens,
                    progress=bar.advance,
                    on_plan=bar.plan,
                    on_doc=sink.add if sink is not None else None,
                    cache=entry,
                )
        del lm  # free the weights before the next model loads
        if not score.tokens:
            raise UsageError(
                f"nothing to score: none of the {score.skipped} documents has a token to score for {score.model}."
            )
        if sink is not None:
            sink.flush()
        if score.skipped:
            out.warn(
                f"{score.model}: skipped {score.skipped} document{'s' if score.skipped != 1 else ''} with no token to score."
            )
        scores.append(score)
    if as_json:
        out.records(s.to_record() for s in scores)
    else:  # with --per-doc, stdout holds the records: the table goes to stderr
        out.table(COLUMNS, [_row(s) for s in scores], stderr=per_doc)


class _PerDoc:
    """`--per-doc` records on stdout as each document is scored. Records of skipped documents wait
    until a document is scored, so a run that scores nothing (a usage error) prints no record."""

    def __init__(self, out, model: str):
        self.out, self.model, self.scored = out, model, False
        self.held: list = []

    def add(self, doc) -> None:
        if not self.scored and doc.skipped:
            self.held.append(doc)
            return
        self.scored = True
        self.flush()
        self.out.record(doc.to_record(self.model))

    def flush(self) -> None:
        if self.scored:
            self.out.records(d.to_record(self.model) for d in self.held)
            self.held = []


def _token_cache(tokenizer, sources: list[str], documents, text_field: str, cache: Path | None, partial):
    """The token cache entry to read this model's tokens from (see evaluation.token_cache_for), built
    with a progress line when needed; None when the files are tokenized as read."""
    import sys

    from gptcli import console, tokcache
    from gptcli.data import expand_paths
    from gptcli.evaluation.perplexity import token_cache_for

    show = tokcache.stderr_progress("tokenizing the eval data")
    shown = []

    def progress(done: int, total: int, tokens: int) -> None:
        shown.append(True)
        show(done, total, tokens)

    try:
        return token_cache_for(
            tokenizer,
            expand_paths(sources),
            documents,
            text_field,
            root=cache,
            build=True if cache is not None else (False if partial else None),
            note=console.info,
            progress=progress,
        )
    finally:
        if shown:
            sys.stderr.write("\n")


COLUMNS = ("model", "docs", "tokens", "nll/token", "perplexity", "bits/byte", "tokens/s")


def _row(s: ModelScore) -> list[str]:
    from gptcli.cli.output import number

    return [
        s.model,
        str(s.documents),
        f"{s.tokens:,}",
        number(s.nll, 4),
        number(s.ppl, 3),
        number(s.bits_per_byte, 4),
        f"{s.tokens_per_s:,.0f}",
    ]
