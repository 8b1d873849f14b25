"""`gptcli generate`: one-shot generation from an argument, stdin or a file of prompts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from gptcli.cli import options as opt

if TYPE_CHECKING:
    from gptcli.cli.output import Output
    from gptcli.generation import Request
    from gptcli.inputs import Record
    from gptcli.loading import LoadedModel
    from gptcli.remote import RemoteModel


def generate(
    prompt: Annotated[
        Optional[str],
        typer.Argument(help="The prompt. '-' reads stdin; piped stdin comes before the prompt.", show_default=False),
    ] = None,
    file: opt.InputFile = None,
    echo: Annotated[
        bool,
        typer.Option("--echo", help="Print the prompt before the generated text.", rich_help_panel=opt.OUTPUT_PANEL),
    ] = False,
    truncate: Annotated[
        bool,
        typer.Option(
            "--truncate", help="Cut prompts longer than the context from the left (with a warning) instead of failing."
        ),
    ] = False,
    batch_size: opt.GenerateBatchSize = None,
    list_models: Annotated[bool, typer.Option("--list-models", help="List the bundled models and exit.")] = False,
    max_new_tokens: opt.MaxNewTokens = None,
    temperature: opt.Temperature = None,
    top_k: opt.TopK = None,
    top_p: opt.TopP = None,
    min_p: opt.MinP = None,
    repetition_penalty: opt.RepetitionPenalty = None,
    greedy: opt.Greedy = False,
    num_return_sequences: opt.NumReturnSequences = None,
    stop: opt.Stop = None,
    seed: opt.Seed = None,
    prompt_lookup: opt.PromptLookup = None,
    draft_model: opt.DraftModel = None,
    draft_tokens: opt.DraftTokens = None,
    as_json: opt.Json = False,
    stats: opt.Stats = False,
    model: opt.Model = None,
    api_base: opt.ApiBase = None,
    timeout: opt.Timeout = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    threads: opt.Threads = None,
    quantize: opt.Quantize = None,
    allow_pickle: opt.AllowPickle = False,
    trust_remote_code: opt.TrustRemoteCode = False,
) -> None:
    """Continue a prompt. Text streams to stdout as it is generated.

    Examples: gptcli generate "Once upon a time" · echo "The sea" | gptcli generate -t 50 ·
    gptcli generate --file prompts.jsonl --json
    """
    from gptcli.cli import speculate
    from gptcli.cli.output import Output
    from gptcli.errors import UsageError
    from gptcli.inputs import gather_prompt, read_prompt_file
    from gptcli.quantize import parse_scheme
    from gptcli.remote import default_params, is_remote
    from gptcli.runtime import check_options

    if list_models:
        from gptcli.cli.models import models

        return models(as_json=as_json)
    # Everything the user typed is checked before any model loads.
    base = default_params(model).updated(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        greedy=greedy or None,
        num_return_sequences=num_return_sequences,
        stop=stop or None,
        seed=seed,
    )
    check_options(device, dtype, threads)
    quant = parse_scheme(quantize)
    speculating = speculate.check(prompt_lookup, draft_model, draft_tokens)
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (got {batch_size}).")
    if file is not None and prompt is not None:
        raise UsageError("give either a prompt or --file, not both.")
    if truncate and is_remote(model):
        raise UsageError("--truncate needs the model's tokenizer; a remote model's server checks prompt lengths.")
    if file is not None:
        records, _ = read_prompt_file(file)
    else:
        from gptcli.inputs import Record

        records = [Record(gather_prompt(prompt))]
    requests = _requests(records, base, "stdin" if str(file) == "-" else str(file or "stdin"))

    from gptcli.generation import Completion, RunStats, stream_generate

    out = Output(as_json=as_json, stats=stats)
    lm, speculation = speculate.open_models(
        out,
        model,
        api_base=api_base,
        timeout=timeout,
        quantize=quant,
        prompt_lookup=prompt_lookup,
        draft_model=draft_model,
        draft_tokens=draft_tokens,
        device=device,
        dtype=dtype,
        threads=threads,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
    )
    run_stats = RunStats()
    events = stream_generate(
        lm,
        requests,
        # Speculative decoding works one sequence at a time: one per batch unless told otherwise.
        batch_size=batch_size or (1 if speculating else opt.GENERATE_BATCH_SIZE),
        speculation=speculation,
        truncate=truncate,
        stats=run_stats,
        on_truncate=lambda label, n: out.warn(f"{label} was cut to its last {n} tokens to fit the context."),
        on_capped=lambda label, n, room: out.warn(
            f"max_new_tokens {n} is more than the context leaves after {label}: at most {room} new tokens "
            f"(the model's context is {getattr(lm, 'context_length', '?')} tokens)."
        ),
    )
    render = (_JsonRenderer if as_json else _TextRenderer)(out, lm, records, requests, echo)
    try:
        for event in events:
            if isinstance(event, Completion):
                render.completion(event)
            else:
                render.piece(event)
    except KeyboardInterrupt:
        # Ctrl-C may land here or inside the core; closing the stream makes the core record the
        # sequences it was generating (and finish the stats) either way. Print them, then stop.
        events.close()
        render.interrupted(run_stats.unfinished)
        raise
    finally:
        out.run_stats(run_stats)


def _requests(records, base, source: str):
    from gptcli.errors import UsageError
    from gptcli.generation import Request
    from gptcli.sampling import coerce

    requests = []
    for rec in records:
        try:
            params = base.updated(**{k: coerce(k, v) for k, v in rec.overrides.items()}) if rec.overrides else base
        except UsageError as exc:
            if rec.line is None:
                raise
            raise UsageError(f"{source} line {rec.line}: {exc.message}", hint=exc.hint) from exc
        requests.append(Request(prompt=rec.prompt, params=params, id=rec.id))
    return requests


class _InOrder:
    """Hands completions to `emit` in input order (request, then sample), holding early ones back."""

    def __init__(
        self, out: Output, lm: LoadedModel | RemoteModel, records: list[Record], requests: list[Request], echo: bool
    ):
        self.out, self.lm, self.records, self.echo = out, lm, records, echo
        # Samples per request; the order is walked, not listed: -n 1000 on many prompts is millions.
        self.counts = [req.params.num_return_sequences for req in requests]
        self.head: tuple[int, int] | None = (0, 0) if requests else None  # the (request, sample) output next
        self.done: dict[tuple[int, int], Any] = {}  # Completions held back until their turn

    def _head(self) -> tuple[int, int] | None:
        return self.head

    def _advance(self) -> None:
        assert self.head is not None  # only called after the head was emitted
        r, s = self.head
        self.head = (r, s + 1) if s + 1 < self.counts[r] else ((r + 1, 0) if r + 1 < len(self.counts) else None)

    def _release(self, emit) -> None:
        while (head := self._head()) is not None and head in self.done:
            emit(self.done.pop(head))
            self._advance()

    def _flush_all(self, emit) -> None:
        """After an interrupt: everything finished or cut short, in order; sequences never started have nothing."""
        for key in sorted(self.done):
            emit(self.done.pop(key))
        self.head = None


class _TextRenderer(_InOrder):
    """Streams the sequence due next live; others print whole, in input order, as they complete."""

    live_started = False
    live_chars = 0  # characters of the live sequence already printed

    def __init__(self, *args: Any):
        super().__init__(*args)
        # Text of sequences still generating that are not due yet (a batch, or requests in flight
        # to a server, run side by side): shown when their turn comes, then they stream live.
        self.waiting: dict[tuple[int, int], list[str]] = {}

    def _begin(self, request: int) -> None:
        if self.echo and not self.live_started:
            self.out.text(self.records[request].prompt)
        self.live_started = True

    def _show(self, request: int, text: str) -> None:
        self._begin(request)
        self.out.text(text)
        self.live_chars += len(text)

    def piece(self, ev) -> None:
        key = (ev.request, ev.sample)
        if self._head() == key:
            self._show(ev.request, ev.text)
        else:
            self.waiting.setdefault(key, []).append(ev.text)

    def completion(self, ev) -> None:
        key = (ev.request, ev.sample)
        self.waiting.pop(key, None)
        if self._head() == key:
            self._begin(ev.request)
            self.out.text("\n")
            self._advance()
            self.live_started, self.live_chars = False, 0
        else:
            self.done[key] = ev
        self._release(self._print_whole)
        head = self._head()
        if head is not None and head in self.waiting:
            self._show(head[0], "".join(self.waiting.pop(head)))

    def interrupted(self, unfinished) -> None:
        for ev in unfinished:
            self.done[(ev.request, ev.sample)] = ev
        head = self._head()
        live = self.done.pop(head, None) if head is not None else None
        if live is not None:
            # Its text is partly on screen: print the rest (any text held back) and end the line.
            self._begin(live.request)
            self.out.text(live.text[self.live_chars :] + "\n")
            self.live_started, self.live_chars = False, 0
        self._flush_all(self._print_whole)

    def _print_whole(self, ev) -> None:
        prefix = self.records[ev.request].prompt if self.echo else ""
        self.out.text(prefix + ev.text + "\n")


class _JsonRenderer(_InOrder):
    """One JSON object per completion, in input order."""

    def piece(self, ev) -> None:
        pass

    def completion(self, ev) -> None:
        self.done[(ev.request, ev.sample)] = ev
        self._release(self._print)

    def interrupted(self, unfinished) -> None:
        for ev in unfinished:
            self.done[(ev.request, ev.sample)] = ev
        self._flush_all(self._print)

    def _print(self, ev) -> None:
        rec = self.records[ev.request]
        self.out.record(ev.to_record(self.lm.name, rec.prompt, id=rec.id, line=rec.line, echo=self.echo))
