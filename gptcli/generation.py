"""The one streaming generation core. `generate`, `chat` and `translate` consume it.

`stream_generate` takes requests (prompt + sampling settings), batches them on
the device with left padding, and yields `Piece` events (new text of one
sequence, never splitting a multi-byte character or leaking part of a stop
string) and a `Completion` for each finished sequence (token counts, finish
reason, timings).

Decoder-only models with a standard KV cache use our own decode loop, the step engine
`DecodeBatch`: one forward per step with only the last position's logits, finished rows
dropped from the batch. `gptcli serve` drives the same engine and adds requests to a running
batch as they arrive (continuous batching). Encoder-decoder models and beam search go through
`model.generate`, which handles those well. Both paths follow the same two rules:

- Padding: prompts of a batch are left-padded with the model's pad token, else its first
  end-of-text token, else 0 (`pad_token_id`). Padded positions are masked out, so the
  choice never changes the output; one rule keeps the two paths from drifting apart.
- Seeding: a sampled sequence's draws depend only on its own seed (the request's seed, plus n
  for its n-th sample; `gptcli.sampling.sequence_seed`), never on the other sequences of its
  batch: the same prompt and seed give the same text alone or in any batch. Our loop gives
  each row its own generator. `model.generate` draws for a whole batch from torch's global
  generator, so there a sampled batch is generated one sequence at a time, each seeded
  with its own seed (the global generator's state is put back afterwards); greedy decoding
  and plain beam search draw nothing and stay batched.

The sampling code is in `gptcli.sampling`, every cache concept in `gptcli.kvcache`.
"""

from __future__ import annotations

import heapq
import inspect
import resource
import sys
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gptcli.errors import InputError
from gptcli.kvcache import PromptCache, cache_kwarg, new_cache
from gptcli.sampling import (
    SamplingParams,
    choose_tokens,
    process_logits,
    resolve_seed,
    row_generators,
    sequence_seed,
)

if TYPE_CHECKING:
    from gptcli.loading import LoadedModel
    from gptcli.remote import RemoteModel
    from gptcli.speculative import Speculation


@dataclass
class Request:
    prompt: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    id: Any = None  # the caller's id (JSONL "id"), echoed back
    prompt_ids: list[int] | None = None  # pre-tokenized prompt (chat passes a templated one)
    encoder_text: str | None = None  # seq2seq: source text fed to the encoder
    messages: list[dict[str, str]] | None = None  # a remote model's chat endpoint: role/content messages


@dataclass
class Piece:
    """New text for one sequence."""

    request: int  # index of the request in the input order
    sample: int  # which of its num_return_sequences
    text: str


@dataclass
class Completion:
    request: int
    sample: int
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "eos", "stop", "length", or "interrupted" (see RunStats.unfinished)
    seed: int | None
    ttft_s: float  # time to first token, from the start of its batch
    decode_s: float  # time from the first token to the last
    elapsed_s: float
    token_ids: list[int] = field(default_factory=list)
    cached_tokens: int = 0  # prompt tokens whose keys/values came from a PromptCache, not computed
    # Speculative decoding (gptcli.speculative): tokens drafted, and how many the model kept.
    speculative: bool = False
    drafted_tokens: int = 0
    accepted_tokens: int = 0

    # False when a remote server sent no token counts: the two counts above are then 0 and mean
    # nothing; records show them as null (unknown), never as an estimate.
    usage_known: bool = True
    # With Request.logprobs: (token id, its log-probability, [(alternative id, log-probability)]) per token
    token_logprobs: list[tuple[int, float, list[tuple[int, float]]]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        # Tokens after the first, over the time they took: the decode speed.
        if self.completion_tokens <= 1 or self.decode_s <= 0:
            return 0.0
        return (self.completion_tokens - 1) / self.decode_s

    def usage(self) -> dict[str, Any]:
        """prompt_tokens, completion_tokens and tokens_per_s for a record: null when unknown."""
        if not self.usage_known:
            return {"prompt_tokens": None, "completion_tokens": None, "tokens_per_s": None}
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens_per_s": round(self.tokens_per_s, 2),
        }

    def to_record(
        self, model: str, prompt: str, *, id: Any = None, line: int | None = None, echo: bool = False
    ) -> dict[str, Any]:
        """The `generate --json` object: the input (its id, else its prompt), then this completion."""
        out: dict[str, Any] = {"id": id} if id is not None else {"prompt": prompt}
        if line is not None:
            out["line"] = line  # blank lines are skipped, so `index` alone cannot find the input line
        out.update(
            index=self.request,
            sample=self.sample,
            text=(prompt + self.text) if echo else self.text,
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            seed=self.seed,
            model=model,
            ttft_s=round(self.ttft_s, 4),
            tokens_per_s=round(self.tokens_per_s, 2),
            elapsed_s=round(self.elapsed_s, 4),
        )
        if self.speculative:
            out.update(drafted_tokens=self.drafted_tokens, accepted_tokens=self.accepted_tokens)

        out.update(self.usage())
        return out


@dataclass
class RunStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    elapsed_s: float = 0.0
    decode_s: float = 0.0
    peak_memory_bytes: int = 0
    usage_known: bool = True  # False: a remote server did not report the token counts of some sequence
    # Sequences cut short when a run stops early (Ctrl-C, or the consumer closing the stream):
    # what they had generated, with finish_reason "interrupted"; their tokens count above.
    unfinished: list[Completion] = field(default_factory=list)
    speculative: bool = False  # some sequence was decoded speculatively
    drafted_tokens: int = 0
    accepted_tokens: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else None


def peak_memory_bytes(device: Any) -> int:
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """This process's peak resident memory. On Linux it is the kernel's high-water mark of the
    process's own memory (VmHWM): getrusage's ru_maxrss also counts the parent's resident memory
    at fork, so a gptcli started by a large process reported that process's size."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


# --------------------------------------------------------------------------- prompts


def encode_prompt(lm: LoadedModel, text: str) -> list[int]:
    ids = lm.tokenizer(text)["input_ids"]
    if not ids:
        # An empty prompt: start from the beginning-of-text token, as models were trained.
        start = lm.tokenizer.bos_token_id
        if start is None:
            start = lm.eos_token_ids[0] if lm.eos_token_ids else 0
        ids = [start]
    return list(ids)


def fit_prompt(ids: list[int], context: int, max_new_tokens: int, truncate: bool, label: str) -> tuple[list[int], bool]:
    """Make the prompt fit the context. Returns (ids, was_truncated)."""
    if len(ids) < context:
        return ids, False
    if not truncate:
        raise InputError(
            f"{label} is {len(ids)} tokens but the model's context is {context} tokens.",
            hint="Shorten it, or pass --truncate to keep its end.",
        )
    keep = max(1, context - min(max_new_tokens, context // 2))
    return ids[-keep:], True


# --------------------------------------------------------------------------- text streaming


class TextTracker:
    """Turns a growing list of token ids into safe-to-print text deltas for one sequence."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.emitted = 0  # characters of `text` already handed out
        self.text = ""
        self.stopped = False

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return self._delta(final=False)

    def finish(self) -> str:
        return self._delta(final=True)

    def _delta(self, final: bool) -> str:
        text = self.text
        end = len(text)
        if self.stop:
            hits = [i for i in (text.find(s, max(0, self.emitted - len(s))) for s in self.stop) if i >= 0]
            if hits:
                end = min(hits)
                self.text = text = text[:end]
                self.stopped = True
                final = True
        if not final:
            # An incomplete multi-byte character decodes to U+FFFD: wait for its other bytes.
            while end > self.emitted and text[end - 1] == "\ufffd":
                end -= 1
            # Hold back a tail that could be the start of a stop string.
            for s in self.stop:
                for k in range(min(len(s) - 1, end - self.emitted), 0, -1):
                    if text[end - k : end] == s[:k]:
                        end -= k
                        break
        delta = text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return delta


# --------------------------------------------------------------------------- the core


def supports_fast_decode(lm: LoadedModel) -> bool:
    if lm.is_encoder_decoder:
        return False
    params = inspect.signature(lm.model.forward).parameters
    if cache_kwarg(lm.model) is None or "attention_mask" not in params:
        return False
    from gptcli.kvcache import decode_support

    return decode_support(lm.model).cached  # what our decode loop cannot drive goes to model.generate


def pad_token_id(lm: LoadedModel) -> int:
    """The token left padding uses, on both decode paths (see the module docstring)."""
    if lm.pad_token_id is not None:
        return lm.pad_token_id
    return lm.eos_token_ids[0] if lm.eos_token_ids else 0


def _left_padded(lm: LoadedModel, batch: list[_Seq]) -> tuple[Any, Any]:
    """(input_ids, attention_mask) of the batch's prompts, left-padded to the longest."""
    import torch

    pad, width = pad_token_id(lm), max(len(s.prompt_ids) for s in batch)
    rows = [[pad] * (width - len(s.prompt_ids)) + s.prompt_ids for s in batch]
    mask = [[0] * (width - len(s.prompt_ids)) + [1] * len(s.prompt_ids) for s in batch]
    return (
        torch.tensor(rows, dtype=torch.long, device=lm.device),
        torch.tensor(mask, dtype=torch.long, device=lm.device),
    )


@dataclass
class _Seq:
    request: int
    sample: int
    prompt_ids: list[int]
    params: SamplingParams
    seed: int | None
    tracker: TextTracker
    encoder_text: str | None = None
    finish_reason: str | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    cached_tokens: int = 0
    speculative: bool = False
    drafted: int = 0
    accepted: int = 0
    started: float = 0.0  # when its prefill began (time to first token counts from here)
    logprobs: int | None = None  # record each chosen token's log-probability, with this many alternatives
    token_logprobs: list[tuple[int, float, list[tuple[int, float]]]] = field(default_factory=list)


@dataclass
class _Prepared:
    """One request, tokenized and fitted; its sequences are created batch by batch."""

    request: int
    prompt_ids: list[int]
    params: SamplingParams
    seed: int | None
    encoder_text: str | None


def stream_generate(
    lm: LoadedModel | RemoteModel,
    requests: list[Request],
    *,
    batch_size: int = 8,
    truncate: bool = False,
    stats: RunStats | None = None,
    on_truncate: Any = None,
    on_capped: Any = None,
    prompt_cache: PromptCache | None = None,
    speculation: Speculation | None = None,
) -> Generator[Piece | Completion, None, None]:
    """Generate for every request; yields Pieces as text appears and a Completion per sequence.

    `on_capped(label, max_new_tokens, room)` is called once, for the first request whose
    max_new_tokens does not fit in the context after its prompt (generation stops at the end of
    the context). If the run stops early (KeyboardInterrupt inside it, or `close()`), the
    sequences it was generating are put in `stats.unfinished` and `stats` is complete.

    `prompt_cache` (one request, one sequence, decoder-only, no beams) keeps the key-value cache
    after the call, so the next call whose prompt extends this one feeds only its new tokens.

    `speculation` decodes each batch of one sequence speculatively (`gptcli.speculative`);
    batches of several sequences decode the ordinary way.

    A remote model (`gptcli.remote`) yields the same events from its server; `batch_size` is then
    the number of requests in flight, and the options about local tokens are the server's business.
    """
    from gptcli.remote import RemoteModel, stream_remote

    if isinstance(lm, RemoteModel):
        yield from stream_remote(lm, requests, concurrency=batch_size, stats=stats)
        return
    stats = stats if stats is not None else RunStats()
    started = time.perf_counter()
    prepared: list[_Prepared] = []
    for r_index, req in enumerate(requests):
        params = req.params.validate()
        if req.prompt_ids is not None:
            ids = list(req.prompt_ids)
        elif lm.is_encoder_decoder:
            ids = []
        else:
            ids = encode_prompt(lm, req.prompt or "")
        label = f"prompt {req.id if req.id is not None else r_index + 1}" if len(requests) > 1 else "the prompt"
        if not lm.is_encoder_decoder:
            ids, cut = fit_prompt(ids, lm.context_length, params.max_new_tokens, truncate, label)
            if cut and on_truncate:
                on_truncate(label, len(ids))
            room = max(lm.context_length - len(ids), 0)
            if params.max_new_tokens > room and on_capped:
                on_capped(label, params.max_new_tokens, room)
                on_capped = None  # once per run: the same cap on every prompt is one message
        prepared.append(_Prepared(r_index, ids, params, resolve_seed(params), req.encoder_text or req.prompt))
    fast = supports_fast_decode(lm)
    single = len(prepared) == 1 and prepared[0].params.num_return_sequences == 1
    reuse = prompt_cache is not None and fast and single and prepared[0].params.num_beams == 1
    if prompt_cache is not None and not reuse:
        prompt_cache.reset()  # it could not follow this call; never hand back a stale cache
    batch: list[_Seq] = []
    batch_started = started
    reported: set[tuple[int, int]] = set()  # (request, sample) of the current batch's Completions
    try:
        for batch in _batches(prepared, batch_size, lm.tokenizer):
            reported = set()
            batch_started = time.perf_counter()
            if speculation is not None and speculation.takes(batch, fast):
                from gptcli.speculative import decode as speculative_decode

                events = speculative_decode(lm, batch[0], speculation, prompt_cache if reuse else None)
            elif reuse:
                events = _decode_batch(lm, batch, prompt_cache)
            elif fast and batch[0].params.num_beams == 1:
                events = _decode_batch(lm, batch)
            else:
                events = _hf_generate_batch(lm, batch)
            for event in events:
                if stats.ttft_s is None:
                    # Time to the first token produced (its text may still be held back, e.g. half a character).
                    firsts = [s.first_token_at for s in batch if s.first_token_at]
                    stats.ttft_s = min(firsts) - started if firsts else None
                if isinstance(event, Completion):
                    _count(stats, event)
                    reported.add((event.request, event.sample))
                yield event
        batch = []
    except (KeyboardInterrupt, GeneratorExit):
        firsts = [s.first_token_at for s in batch if s.first_token_at]
        if stats.ttft_s is None and firsts:
            stats.ttft_s = min(firsts) - started
        for seq in batch:
            if (seq.request, seq.sample) not in reported:
                seq.finish_reason = "interrupted"
                done = _completion(seq, batch_started)
                done.text = done.text.rstrip("\ufffd")  # half a character waiting for its other bytes
                _count(stats, done)
                stats.unfinished.append(done)
        raise
    finally:
        if not sys.is_finalizing():  # a stream collected at interpreter exit: modules are torn down
            stats.elapsed_s = time.perf_counter() - started
            stats.peak_memory_bytes = peak_memory_bytes(lm.device)


def _count(stats: RunStats, done: Completion) -> None:
    stats.prompt_tokens += done.prompt_tokens if done.sample == 0 else 0  # a prompt is read once for all its samples
    stats.completion_tokens += done.completion_tokens
    stats.decode_s += done.decode_s
    stats.speculative = stats.speculative or done.speculative
    stats.drafted_tokens += done.drafted_tokens
    stats.accepted_tokens += done.accepted_tokens


def _batches(prepared: list[_Prepared], batch_size: int, tokenizer: Any) -> Iterator[list[_Seq]]:
    """Batches of sequences with the same sampling settings, ordered by their first sequence.

    Sequences are created as their batch comes up, so `-n 1000` with many prompts holds one
    batch per sampling group in memory, not every sequence of the run.
    """
    size = max(1, batch_size)
    groups: dict[tuple, list[_Prepared]] = {}
    for p in prepared:
        groups.setdefault(p.params.batch_key, []).append(p)

    def group_batches(group: list[_Prepared]) -> Iterator[list[_Seq]]:
        batch: list[_Seq] = []
        for p in group:
            for s in range(p.params.num_return_sequences):
                tracker = TextTracker(tokenizer, p.params.stop)
                batch.append(
                    _Seq(p.request, s, p.prompt_ids, p.params, sequence_seed(p.seed, s), tracker, p.encoder_text)
                )
                if len(batch) == size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    # Each group's batches already come in input order, so merging the groups gives the order a
    # sort of all batches by their first sequence would, one batch per group at a time.
    return heapq.merge(*(group_batches(g) for g in groups.values()), key=lambda b: (b[0].request, b[0].sample))


def _completion(seq: _Seq, started: float) -> Completion:
    now = time.perf_counter()
    first = seq.first_token_at or now
    return Completion(
        request=seq.request,
        sample=seq.sample,
        text=seq.tracker.text,
        prompt_tokens=len(seq.prompt_ids),
        completion_tokens=len(seq.tracker.ids),
        finish_reason=seq.finish_reason or "length",
        seed=seq.seed,
        ttft_s=first - started,
        decode_s=(seq.last_token_at or first) - first,
        elapsed_s=now - started,
        token_ids=list(seq.tracker.ids),
        cached_tokens=seq.cached_tokens,
        speculative=seq.speculative,
        drafted_tokens=seq.drafted,
        accepted_tokens=seq.accepted,
        token_logprobs=list(seq.token_logprobs),
    )


def forward_step(
    call: Any, cache_name: str, accepts_positions: bool, input_ids: Any, attention: Any, positions: Any, cache: Any
) -> tuple[Any, Any]:
    """One forward pass of the decode loop: (last position's logits (B, V), the cache).

    Every model call of the loop goes through here (prefill and steps); `call` is the model, or
    the faster forward DecodeBatch picked for it once (gptcli.llama_decode).
    """
    kwargs = {cache_name: cache, "attention_mask": attention, "use_cache": True}
    if accepts_positions:
        kwargs["position_ids"] = positions[:, -input_ids.shape[1] :]
    out = call(input_ids=input_ids, logits_to_keep=1, **kwargs)
    cache = getattr(out, cache_name, None) or getattr(out, "past_key_values", None) or cache
    return out.logits[:, -1, :], cache


@dataclass
class _Rows:
    """The device state of some decoding sequences, one row each, at a step boundary.

    `attention` and `positions` cover the cached positions plus the one token each row feeds
    next (`next_tokens`); `seen` (only when a row uses a repetition penalty) holds every token
    of each row, left-padded with the row's own first token so that padding is never penalised.
    """

    seqs: list[_Seq]
    cache: Any
    attention: Any  # (B, cached + 1), 0 on left padding
    positions: Any  # (B, cached + 1)
    generators: list[Any]
    next_tokens: Any = None  # (B, 1)
    seen: Any = None  # (B, L) or None

    def select(self, keep: list[int]) -> None:
        import torch

        if len(keep) == len(self.seqs):
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.attention.device)
        self.cache.batch_select_indices(index)
        self.attention, self.positions = self.attention[index], self.positions[index]
        self.seen = self.seen[index] if self.seen is not None else None
        self.next_tokens = self.next_tokens[index] if self.next_tokens is not None else None
        self.seqs = [self.seqs[k] for k in keep]
        self.generators = [self.generators[k] for k in keep]
        self._trim()

    def _trim(self) -> None:
        """Drop leading columns that are padding in every row (the long prompt that caused
        them has left): attention over them costs time on every step."""
        cached = self.attention.shape[1] - 1
        used = self.attention[:, :cached].any(dim=0).nonzero()
        first = int(used[0]) if used.numel() else cached
        if first < _TRIM_COLUMNS or not _can_merge(self.cache):
            return
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:].clone(), layer.values[:, :, first:].clone()
        self.attention, self.positions = self.attention[:, first:], self.positions[:, first:]

    def advance(self) -> None:
        """Make room for the next tokens: one more column of mask, positions and seen tokens."""
        import torch

        self.attention = torch.cat([self.attention, self.attention.new_ones((len(self.seqs), 1))], dim=1)
        self.positions = torch.cat([self.positions, self.positions[:, -1:] + 1], dim=1)
        if self.seen is not None:
            self.seen = torch.cat([self.seen, self.next_tokens], dim=1)


# Leading all-padding columns are cut once there are this many (cutting copies the cache).
_TRIM_COLUMNS = 32


def _can_merge(cache: Any) -> bool:
    """Whether the cache's rows can be padded and joined with another batch's: plain per-layer
    key/value tensors (no sliding window, no linear-attention state)."""
    layers = getattr(cache, "layers", None) or []
    return bool(layers) and all(
        type(layer).__name__ in ("DynamicLayer", "GrowingLayer") and getattr(layer, "keys", None) is not None
        for layer in layers
    )


def _pad_left(tensor: Any, width: int, dim: int, value: int = 0) -> Any:
    import torch

    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_full(shape, value), tensor], dim=dim)


class DecodeBatch:
    """The decoder-only decode loop as a step engine, with continuous batching.

    `add(seqs)` prefills new sequences (one forward over their left-padded prompts), picks
    their first tokens and, if the batch is running, joins them to it: the shorter of the two
    key-value caches is left-padded (masked) to the other's length and the rows are
    concatenated. `step()` runs one forward for every running row and picks each row's next
    token. Finished rows leave at once, as do rows passed to `cancel()`. Each row keeps its
    own seeded generator and its own position ids, and padding is masked, so a sequence's
    tokens do not depend on which rows it shares a batch with, or when it joined.

    Rows with different sampling settings may share a batch: logits are processed and tokens
    chosen per group of equal settings. `stream_generate` drives it one batch at a time;
    `gptcli serve` adds requests as they arrive.
    """

    def __init__(self, lm: LoadedModel, prompt_cache: PromptCache | None = None):
        self.lm = lm
        self.eos = set(lm.eos_token_ids)
        cache_name = cache_kwarg(lm.model)
        assert cache_name is not None  # supports_fast_decode() sends models without a cache to model.generate
        self.cache_name = cache_name
        self.accepts_positions = "position_ids" in inspect.signature(lm.model.forward).parameters
        from gptcli.lean_decode import decode_forward as lean_forward

        self.call = lean_forward(lm.model) or lm.model  # a lean forward (gptcli.lean_decode), where one applies
        self.prompt_cache = prompt_cache  # one sequence only: the batch never grows (see stream_generate)
        self.running: _Rows | None = None

    @property
    def seqs(self) -> list[_Seq]:
        return self.running.seqs if self.running is not None else []

    def __len__(self) -> int:
        return len(self.seqs)

    def can_join(self) -> bool:
        """Whether new sequences can join the running batch now (else wait until it is empty)."""
        return self.running is None or (self.prompt_cache is None and _can_merge(self.running.cache))

    def add(self, seqs: list[_Seq]) -> list[Piece | Completion]:
        """Prefill `seqs` and pick their first tokens; those not finished join the batch."""
        import torch

        if not seqs:
            return []
        assert self.can_join()
        now = time.perf_counter()
        for seq in seqs:
            seq.started = now
        with torch.inference_mode():
            input_ids, attention = _left_padded(self.lm, seqs)
            positions = (attention.cumsum(-1) - 1).clamp(min=0)
            step_input, cache = input_ids, None
            if self.prompt_cache is not None:
                assert len(seqs) == 1 and self.running is None
                # One row, no padding: skip the prefix whose keys/values are already cached.
                seqs[0].cached_tokens = self.prompt_cache.prepare(self.lm.model, seqs[0].prompt_ids)
                cache = self.prompt_cache.cache
                step_input = input_ids[:, seqs[0].cached_tokens :]
            else:
                cache = new_cache(self.lm.model)
            seen = None
            if any(s.params.repetition_penalty not in (None, 1.0) for s in seqs):
                seen = torch.tensor(
                    [[s.prompt_ids[0]] * (input_ids.shape[1] - len(s.prompt_ids)) + s.prompt_ids for s in seqs],
                    dtype=torch.long,
                    device=self.lm.device,
                )
            rows = _Rows(seqs, cache, attention, positions, row_generators([s.seed for s in seqs], self.lm.device))
            rows.seen = seen
            logits = self._forward(rows, step_input)
            events = self._settle(rows, logits)
            if rows.seqs:
                self.running = rows if self.running is None else self._merge(self.running, rows)
        return events

    def step(self) -> list[Piece | Completion]:
        """One token for every running sequence."""
        import torch

        rows = self.running
        if rows is None:
            return []
        with torch.inference_mode():
            logits = self._forward(rows, rows.next_tokens)
            events = self._settle(rows, logits)
        if not rows.seqs:
            self.running = None
        return events

    def cancel(self, seqs: list[_Seq]) -> None:
        """Remove these sequences from the batch now; they produce no more events."""
        rows = self.running
        if rows is None:
            return
        gone = {id(s) for s in seqs}
        keep = [i for i, s in enumerate(rows.seqs) if id(s) not in gone]
        if not keep:
            self.running = None
            return
        import torch

        with torch.inference_mode():
            rows.select(keep)

    # ------------------------------------------------------------------ internals

    def _forward(self, rows: _Rows, step_input: Any) -> Any:
        pc = self.prompt_cache
        if pc is not None:
            pc.writing()
        logits, rows.cache = forward_step(
            self.call,
            self.cache_name,
            self.accepts_positions,
            step_input,
            rows.attention,
            rows.positions,
            rows.cache,
        )
        if pc is not None:
            pc.wrote(rows.cache, step_input[0].tolist())
        return logits

    def _choose(self, rows: _Rows, logits: Any) -> list[int]:
        """Each row's next token, processed and drawn with its own settings and generator."""
        import torch

        groups: dict[tuple, list[int]] = {}
        for i, seq in enumerate(rows.seqs):
            groups.setdefault(seq.params.batch_key, []).append(i)
        if len(groups) == 1:
            params = rows.seqs[0].params
            return choose_tokens(process_logits(logits, params, rows.seen), params, rows.generators).tolist()
        chosen = [0] * len(rows.seqs)
        for members in groups.values():
            index = torch.tensor(members, dtype=torch.long, device=logits.device)
            params = rows.seqs[members[0]].params
            seen = rows.seen[index] if rows.seen is not None else None
            picks = choose_tokens(
                process_logits(logits[index], params, seen), params, [rows.generators[i] for i in members]
            )
            for i, token in zip(members, picks.tolist()):
                chosen[i] = token
        return chosen

    def _record_logprobs(self, rows: _Rows, logits: Any, chosen: list[int]) -> None:
        wanted = [i for i, s in enumerate(rows.seqs) if s.logprobs is not None]
        if not wanted:
            return
        import torch

        index = torch.tensor(wanted, dtype=torch.long, device=logits.device)
        logprobs = logits[index].float().log_softmax(-1)
        for k, i in enumerate(wanted):
            seq = rows.seqs[i]
            top = int(seq.logprobs or 0)
            alternatives: list[tuple[int, float]] = []
            if top:
                values, ids = logprobs[k].topk(min(top, logprobs.shape[-1]))
                alternatives = list(zip(ids.tolist(), values.tolist()))
            seq.token_logprobs.append((chosen[i], float(logprobs[k, chosen[i]]), alternatives))

    def _settle(self, rows: _Rows, logits: Any) -> list[Piece | Completion]:
        """Give each row its chosen token; finished rows leave, the rest wait for the next step."""
        import torch

        chosen = self._choose(rows, logits)
        self._record_logprobs(rows, logits, chosen)
        now = time.perf_counter()
        events: list[Piece | Completion] = []
        keep = []
        context = self.lm.context_length
        for i, (seq, token) in enumerate(zip(rows.seqs, chosen)):
            seq.first_token_at = seq.first_token_at or now
            if token in self.eos:
                seq.finish_reason = "eos"
            else:
                seq.last_token_at = now
                delta = seq.tracker.add(token)
                if seq.tracker.stopped:
                    seq.finish_reason = "stop"
                elif len(seq.tracker.ids) >= seq.params.max_new_tokens:
                    seq.finish_reason = "length"
                elif len(seq.prompt_ids) + len(seq.tracker.ids) >= context:
                    seq.finish_reason = "length"  # ran out of context
                if delta:
                    events.append(Piece(seq.request, seq.sample, delta))
            if seq.finish_reason:
                tail = seq.tracker.finish()
                if tail:
                    events.append(Piece(seq.request, seq.sample, tail))
                events.append(_completion(seq, seq.started))
            else:
                keep.append(i)
        if keep:
            # Drop finished rows from the batch so they cost nothing from now on.
            rows.select(keep)
            rows.next_tokens = torch.tensor([[chosen[k]] for k in keep], dtype=torch.long, device=self.lm.device)
            rows.advance()
        else:
            rows.seqs, rows.generators = [], []
        return events

    def _merge(self, a: _Rows, b: _Rows) -> _Rows:
        """One batch of a's rows then b's: the shorter cache is left-padded to the longer."""
        import torch

        width = max(a.attention.shape[1], b.attention.shape[1])
        cached = width - 1
        for la, lb in zip(a.cache.layers, b.cache.layers):
            la.keys = torch.cat([_pad_left(la.keys, cached, 2), _pad_left(lb.keys, cached, 2)], dim=0)
            la.values = torch.cat([_pad_left(la.values, cached, 2), _pad_left(lb.values, cached, 2)], dim=0)
        seen = None
        if a.seen is not None or b.seen is not None:
            seen = self._seen_of(a.seqs + b.seqs)
        return _Rows(
            a.seqs + b.seqs,
            a.cache,
            torch.cat([_pad_left(a.attention, width, 1), _pad_left(b.attention, width, 1)]),
            torch.cat([_pad_left(a.positions, width, 1), _pad_left(b.positions, width, 1)]),
            a.generators + b.generators,
            torch.cat([a.next_tokens, b.next_tokens]),
            seen,
        )

    def _seen_of(self, seqs: list[_Seq]) -> Any:
        import torch

        tokens = [s.prompt_ids + s.tracker.ids for s in seqs]
        width = max(len(t) for t in tokens)
        return torch.tensor([[t[0]] * (width - len(t)) + t for t in tokens], dtype=torch.long, device=self.lm.device)


def _decode_batch(
    lm: LoadedModel, batch: list[_Seq], prompt_cache: PromptCache | None = None
) -> Iterator[Piece | Completion]:
    engine = DecodeBatch(lm, prompt_cache)
    yield from engine.add(batch)
    while len(engine):
        yield from engine.step()


def _hf_generate_batch(lm: LoadedModel, batch: list[_Seq]) -> Iterator[Piece | Completion]:
    """Beam search and encoder-decoder models: delegate to `model.generate`, one batch at a time.

    A sampled batch goes one sequence at a time, each under its own seed (the seeding rule in
    the module docstring): `model.generate` draws the whole batch from one global generator.
    """
    started = time.perf_counter()
    groups = [batch] if batch[0].params.is_greedy else [[seq] for seq in batch]
    for group in groups:
        yield from _hf_generate_group(lm, group, started)


def _hf_generate_group(lm: LoadedModel, batch: list[_Seq], started: float) -> Iterator[Piece | Completion]:
    import torch

    model, tok, device = lm.model, lm.tokenizer, lm.device
    params = batch[0].params
    if lm.is_encoder_decoder:
        enc = tok(
            [s.encoder_text or "" for s in batch],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=lm.context_length,
        )
        inputs = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        prompt_lens = enc["attention_mask"].sum(-1).tolist()
    else:
        ids, mask = _left_padded(lm, batch)
        inputs = {"input_ids": ids, "attention_mask": mask}
        prompt_lens = [len(s.prompt_ids) for s in batch]
    gen_kwargs: dict[str, Any] = dict(
        max_new_tokens=max(s.params.max_new_tokens for s in batch),
        num_beams=params.num_beams,
        do_sample=not params.is_greedy,
        pad_token_id=pad_token_id(lm),  # what finished sequences are padded with: the same rule
        eos_token_id=lm.eos_token_ids or None,
        # Each sequence stops at its own max_new_tokens (below); a forced end token (Marian)
        # would land at the batch's longest limit, so a line alone came out a token shorter.
        forced_eos_token_id=None,
    )
    if not params.is_greedy:
        gen_kwargs.update(temperature=params.temperature, top_k=params.top_k or 0, top_p=params.top_p or 1.0)
        if params.min_p:
            gen_kwargs["min_p"] = params.min_p
    if params.repetition_penalty:
        gen_kwargs["repetition_penalty"] = params.repetition_penalty
    seed = None if params.is_greedy else batch[0].seed  # a sampled group is one sequence (see above)
    # fork_rng puts torch's global generator back afterwards: seeding here changes nothing outside.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        with torch.inference_mode():
            out = model.generate(**inputs, **gen_kwargs)
    now = time.perf_counter()
    new = out if lm.is_encoder_decoder else out[:, inputs["input_ids"].shape[1] :]
    eos = set(lm.eos_token_ids)
    special = set(getattr(tok, "all_special_ids", []) or [])
    for seq, row, plen in zip(batch, new.tolist(), prompt_lens):
        seq.first_token_at = seq.first_token_at or now
        seq.last_token_at = now
        for token in row:
            if token in eos and seq.tracker.ids:
                seq.finish_reason = "eos"
                break
            if token in special:
                continue  # decoder start and padding tokens
            seq.tracker.add(token)
            if seq.tracker.stopped:
                seq.finish_reason = "stop"
                break
            if len(seq.tracker.ids) >= seq.params.max_new_tokens:
                seq.finish_reason = "length"
                break
        seq.finish_reason = seq.finish_reason or ("eos" if any(t in eos for t in row) else "length")
        seq.prompt_ids = seq.prompt_ids or [0] * int(plen)
        text = seq.tracker.finish()
        if text:
            yield Piece(seq.request, seq.sample, text)
        yield _completion(seq, started)
