"""Speculative decoding of one sequence: cheap drafts, verified by the model in one forward.

Each step drafts up to k tokens, feeds the sequence's last token and the drafts to the model
in one forward pass (which costs about as much as one token when decoding is bound by
reading the weights), keeps the drafts the model agrees with, and adds one token of the
model's own: 1 to k+1 tokens per pass. Drafts come from

- prompt lookup (`--prompt-lookup N`): the tokens that followed the most recent earlier
  occurrence of the sequence's last n-gram (n from NGRAM_MAX down to 1), up to N of them,
  as transformers' "prompt lookup decoding" does. It pays when the output copies its input
  (quoting, editing, summarising, translating names and numbers).
- a draft model (`--draft-model M`, same tokenizer): a smaller model decodes k tokens with its
  own key-value cache.

Acceptance keeps the output distribution exactly the model's:

- greedy: a draft is kept when it is the model's argmax, so the text is the ordinary greedy
  text (up to floating-point differences between a k-token and a 1-token forward);
- sampling (Leviathan et al. 2023, Chen et al. 2023): draft x, drawn from q, is kept with
  probability min(1, p(x)/q(x)), where p is the model's distribution after temperature,
  top-k, top-p and min-p; on rejection the token is drawn from normalize(max(0, p - q)).
  A prompt-lookup draft is a point mass (q(x) = 1): kept with probability p(x), else the
  token is drawn from p without x. Every draw comes from the sequence's own seeded
  generator, so a seed gives the same text every time (not the same text as ordinary
  decoding with that seed: the draws are used differently).

Rejected drafts are cut from the key-value cache (`PromptCache` keeps the token ids the cache
holds and crops it to the prefix the sequence still shares). Caches that cannot be cut back
(sliding-window layers) and batches of several sequences decode the ordinary way.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gptcli.errors import UsageError
from gptcli.kvcache import PromptCache, cache_kwarg, new_cache

if TYPE_CHECKING:
    from gptcli.generation import Completion, Piece, _Seq
    from gptcli.loading import LoadedModel
    from gptcli.sampling import SamplingParams

DEFAULT_DRAFT_TOKENS = 4
# More drafts than this per step only cost verification work: acceptance runs out long before.
MAX_DRAFT_TOKENS = 64
# Prompt lookup matches the last NGRAM_MAX tokens first, then shorter n-grams.
NGRAM_MAX = 3


@dataclass
class Speculation:
    """What `stream_generate` needs to decode speculatively; one object serves a whole run."""

    prompt_lookup: int = 0  # draft up to this many tokens by prompt lookup (0: off)
    draft: LoadedModel | None = None  # the draft model, else prompt lookup
    draft_tokens: int = DEFAULT_DRAFT_TOKENS
    # Called once, with a sentence, when some sequences decode the ordinary way.
    on_fallback: Callable[[str], None] | None = None
    # The draft model's cache, kept across sequences (and chat turns): a prompt that shares a
    # prefix with the previous one is not fed to the draft again.
    draft_cache: PromptCache = field(default_factory=PromptCache)
    _told: bool = False

    @property
    def max_drafts(self) -> int:
        return self.draft_tokens if self.draft is not None else self.prompt_lookup

    def takes(self, batch: list[_Seq], fast: bool) -> bool:
        """Whether this batch is decoded speculatively; says once why not when it is not."""
        if not fast:
            self.fallback("this model is decoded by transformers' generate: speculative decoding is off.")
        elif batch[0].params.num_beams > 1:
            self.fallback("beam search decodes without speculation.")
        elif len(batch) > 1:
            self.fallback(
                f"speculative decoding works on one sequence at a time: batches of {len(batch)} "
                "decode without it (--batch-size 1 speculates on each)."
            )
        else:
            return True
        return False

    def fallback(self, reason: str) -> None:
        if not self._told and self.on_fallback is not None:
            self.on_fallback(reason)
        self._told = True


# --------------------------------------------------------------------------- checks


def check_options(prompt_lookup: int | None, draft_model: str | None, draft_tokens: int | None) -> bool:
    """Check the speculative options before anything loads; True when speculation was asked for."""
    if prompt_lookup is not None and draft_model is not None:
        raise UsageError("give either --prompt-lookup or --draft-model, not both.")
    if prompt_lookup is not None and not 1 <= prompt_lookup <= MAX_DRAFT_TOKENS:
        raise UsageError(f"--prompt-lookup must be from 1 to {MAX_DRAFT_TOKENS} (got {prompt_lookup}).")
    if draft_tokens is not None:
        if draft_model is None:
            raise UsageError("--draft-tokens needs --draft-model.")
        if not 1 <= draft_tokens <= MAX_DRAFT_TOKENS:
            raise UsageError(f"--draft-tokens must be from 1 to {MAX_DRAFT_TOKENS} (got {draft_tokens}).")
    return prompt_lookup is not None or draft_model is not None


def check_target(lm: Any) -> None:
    from gptcli.remote import RemoteModel

    if isinstance(lm, RemoteModel):
        raise UsageError(
            f"speculative decoding (--prompt-lookup, --draft-model) runs on local weights; '{lm.name}' is "
            "decoded by its server.",
            hint="Drop the option, or use the server's own speculative decoding (vLLM, llama.cpp).",
        )
    if lm.is_encoder_decoder:
        raise UsageError(
            f"speculative decoding (--prompt-lookup, --draft-model) needs a decoder-only model; "
            f"'{lm.name}' is an encoder-decoder model."
        )


def check_draft(target: LoadedModel, draft: LoadedModel) -> None:
    """The draft must be decoder-only and speak the target's tokenizer, token for token."""
    from gptcli.generation import supports_fast_decode

    if draft.is_encoder_decoder:
        raise UsageError(f"--draft-model '{draft.name}' is an encoder-decoder model; it must be decoder-only.")
    # The draft is driven by our decode loop, and its rejected tokens are cut from its cache.
    if not supports_fast_decode(draft) or not can_rollback(new_cache(draft.model)):
        raise UsageError(
            f"--draft-model '{draft.name}' cannot draft: its architecture is not one gptcli's decode loop can "
            "drive with a cache that can be cut back (sliding-window attention cannot)."
        )
    mine, theirs = target.tokenizer.get_vocab(), draft.tokenizer.get_vocab()
    if mine != theirs:
        differ = sum(1 for tok, i in mine.items() if theirs.get(tok) != i) + len(set(theirs) - set(mine))
        raise UsageError(
            f"--draft-model '{draft.name}' has a different tokenizer from '{target.name}' "
            f"({len(theirs)} vs {len(mine)} tokens, {differ} differ).",
            hint="The draft model must use the same tokenizer (vocabulary and ids) as the model.",
        )


def can_rollback(cache: Any) -> bool:
    """Whether rejected drafts can be cut from this cache (not from sliding-window layers)."""
    layers = getattr(cache, "layers", None)
    return (
        layers is not None
        and hasattr(cache, "crop")
        and all(type(layer).__name__ in ("DynamicLayer", "GrowingLayer") for layer in layers)
    )


# --------------------------------------------------------------------------- drafting


class PromptLookup:
    """Drafts by copying what followed the most recent earlier occurrence of the last n-gram.

    An index from every n-gram (n <= NGRAM_MAX) to the positions after its first and latest
    occurrences is kept up to date as the sequence grows, so a lookup costs a few dictionary
    reads, not a scan. The latest occurrence is used unless it is too close to the end to give
    k tokens (inside a run of repeats) and the first gives more.
    """

    def __init__(self, ngram_max: int = NGRAM_MAX):
        self.ngram_max = ngram_max
        self.first: dict[tuple[int, ...], int] = {}
        self.last: dict[tuple[int, ...], int] = {}
        self.indexed = 1  # continuation positions below this are in the index

    def propose(self, ids: list[int], k: int) -> list[int]:
        # Index every n-gram that has a continuation; the sequence's own last n-gram has none yet.
        for pos in range(self.indexed, len(ids)):
            for n in range(1, min(self.ngram_max, pos) + 1):
                key = tuple(ids[pos - n : pos])
                self.first.setdefault(key, pos)
                self.last[key] = pos
        self.indexed = max(self.indexed, len(ids))
        for n in range(min(self.ngram_max, len(ids)), 0, -1):
            key = tuple(ids[-n:])
            latest = self.last.get(key)
            if latest is not None:
                start = self.first[key] if len(ids) - latest < k else latest
                return ids[start : start + k]
        return []


def sampling_probs(logits: Any, params: SamplingParams) -> Any:
    """(B, V) logits to the (B, V) float32 distribution `sampling.choose_tokens` draws from:
    temperature, then top-k, top-p and min-p, renormalised."""
    import torch

    from gptcli.sampling import candidate_probs

    probs, index = candidate_probs(logits, params)
    probs = probs / probs.sum(-1, keepdim=True)
    if index is None:
        return probs
    return torch.zeros(logits.shape, dtype=probs.dtype, device=probs.device).scatter_(-1, index, probs)


def _draw(probs: Any, generator: Any) -> int:
    """One index drawn in proportion to a (V,) row of non-negative weights."""
    import torch

    cdf = probs.cumsum(-1)
    u = torch.rand(1, generator=generator, device=probs.device, dtype=cdf.dtype)
    # right=True skips zero-probability entries (their CDF equals their predecessor's)
    pick = int(torch.searchsorted(cdf, u * cdf[-1], right=True).item())
    return min(pick, probs.shape[-1] - 1)


def _uniform(generator: Any, device: Any) -> float:
    import torch

    return float(torch.rand(1, generator=generator, device=device).item())


class _Runner:
    """Feeds one model through a PromptCache: the cache is cut to the prefix a call shares with
    what it holds, then the rest is fed and the last `keep` positions' logits come back."""

    def __init__(self, model: Any, cache: PromptCache):
        from gptcli.lean_decode import decode_forward

        self.model, self.cache = model, cache
        self.call = decode_forward(model) or model  # a lean forward (gptcli.lean_decode), where one applies
        name = cache_kwarg(model)
        assert name is not None  # only models our decode loop drives get here (supports_fast_decode)
        self.name: str = name
        self.positions = "position_ids" in inspect.signature(model.forward).parameters
        self.device = next(model.parameters()).device

    def forward(self, ids: list[int], extra: Sequence[int] = (), keep: int = 1) -> tuple[Any, int]:
        """Logits (keep, V) after feeding `ids` + `extra`; also how many tokens came from the cache."""
        import torch

        cached = self.cache.prepare(self.model, ids)
        fed = ids[cached:] + list(extra)
        total = cached + len(fed)
        kwargs: dict[str, Any] = {
            self.name: self.cache.cache,
            "attention_mask": torch.ones((1, total), dtype=torch.long, device=self.device),
            "use_cache": True,
        }
        if self.positions:
            kwargs["position_ids"] = torch.arange(cached, total, device=self.device)[None]
        self.cache.writing()
        out = self.call(input_ids=torch.tensor([fed], device=self.device), logits_to_keep=keep, **kwargs)
        cache = getattr(out, self.name, None) or getattr(out, "past_key_values", None) or self.cache.cache
        self.cache.wrote(cache, fed)
        return out.logits[0, -keep:], cached


def _processed(logits: Any, params: SamplingParams, ids: list[int], drafts: list[int], device: Any) -> Any:
    """The repetition penalty for each verified position: row i has seen ids + drafts[:i]."""
    import torch

    from gptcli.sampling import process_logits

    if params.repetition_penalty in (None, 1.0):
        return logits
    seen = ids + drafts
    rows = [
        process_logits(logits[i : i + 1], params, torch.tensor([seen[: len(ids) + i]], device=device))
        for i in range(logits.shape[0])
    ]
    return torch.cat(rows)


def _draft_model_tokens(
    runner: _Runner, ids: list[int], k: int, params: SamplingParams, generator: Any
) -> tuple[list[int], list[Any]]:
    """k tokens decoded by the draft model, and (sampling) the distribution each was drawn from."""
    drafts: list[int] = []
    dists: list[Any] = []
    for _ in range(k):
        logits, _ = runner.forward(ids + drafts)
        logits = _processed(logits, params, ids + drafts, [], runner.device)
        if params.is_greedy:
            drafts.append(int(logits[-1].float().argmax().item()))
        else:
            q = sampling_probs(logits[-1:], params)[0]
            drafts.append(_draw(q, generator))
            dists.append(q)
    return drafts, dists


def _verify(
    logits: Any, drafts: list[int], dists: list[Any], params: SamplingParams, generator: Any
) -> tuple[int, int]:
    """(how many drafts are kept, the model's own next token) from the verify pass's logits.

    Row i of `logits` is the model's distribution after the sequence and drafts[:i].
    """
    if params.is_greedy:
        choices = logits.float().argmax(dim=-1).tolist()
        kept = 0
        while kept < len(drafts) and choices[kept] == drafts[kept]:
            kept += 1
        return kept, choices[kept]
    probs = sampling_probs(logits, params)
    vocab = probs.shape[-1]
    for i, x in enumerate(drafts):
        p = probs[i]
        px = float(p[x].item()) if x < vocab else 0.0
        if dists:  # drawn from the draft model's q
            q = dists[i][:vocab]
            qx = float(dists[i][x].item())
            if _uniform(generator, p.device) * qx < px:
                continue
            if q.shape[-1] < vocab:
                q = _pad(q, vocab)
            residual = (p - q).clamp_(min=0.0)
        else:  # prompt lookup: a point mass on x
            if _uniform(generator, p.device) < px:
                continue
            residual = p.clone()
            if x < vocab:
                residual[x] = 0.0
        if float(residual.sum().item()) <= 0.0:  # rounding left nothing: p itself is the right fallback
            residual = p
        return i, _draw(residual, generator)
    return len(drafts), _draw(probs[len(drafts)], generator)


def _pad(q: Any, vocab: int) -> Any:
    import torch

    return torch.cat([q, q.new_zeros(vocab - q.shape[-1])])


# --------------------------------------------------------------------------- the loop


def decode(
    lm: LoadedModel, seq: _Seq, spec: Speculation, prompt_cache: PromptCache | None = None
) -> Iterator[Piece | Completion]:
    """Generate one sequence speculatively; the same events, in the same order, as ordinary decoding."""
    import torch

    from gptcli.generation import Piece, _completion, _decode_batch
    from gptcli.sampling import row_generators

    model = lm.model
    if not can_rollback(prompt_cache.cache if prompt_cache is not None and prompt_cache.cache else new_cache(model)):
        spec.fallback("this model's cache cannot drop rejected drafts (sliding-window attention): decoding normally.")
        yield from _decode_batch(lm, [seq], prompt_cache)
        return
    started = time.perf_counter()
    params = seq.params
    eos = set(lm.eos_token_ids)
    seq.speculative = True
    runner = _Runner(model, prompt_cache if prompt_cache is not None else PromptCache())
    generator = row_generators([seq.seed], lm.device)[0]
    lookup = PromptLookup() if spec.draft is None else None
    drafter = _Runner(spec.draft.model, spec.draft_cache) if spec.draft is not None else None
    ids = list(seq.prompt_ids)  # the whole sequence: prompt, then every token kept
    limit = min(params.max_new_tokens, lm.context_length - len(ids))  # new tokens, as ordinary decoding allows
    generated = 0
    first = True
    with torch.inference_mode():
        while generated < limit:
            # Never draft past the last token this sequence may produce: the verify pass adds one.
            k = min(spec.max_drafts, limit - generated - 1)
            drafts: list[int] = []
            dists: list[Any] = []
            if k > 0 and lookup is not None:
                drafts = lookup.propose(ids, k)
            elif k > 0 and spec.draft is not None and drafter is not None:
                k = min(k, spec.draft.context_length - len(ids))
                if k > 0:
                    drafts, dists = _draft_model_tokens(drafter, ids, k, params, generator)
            logits, cached = runner.forward(ids, drafts, keep=len(drafts) + 1)
            if first:
                seq.cached_tokens, first = cached, False
            logits = _processed(logits, params, ids, drafts, logits.device)
            kept, own = _verify(logits, drafts, dists, params, generator)
            seq.drafted += len(drafts)
            seq.accepted += kept
            now = time.perf_counter()
            for token in [*drafts[:kept], own]:
                seq.first_token_at = seq.first_token_at or now
                if token in eos:
                    seq.finish_reason = "eos"
                else:
                    seq.last_token_at = now
                    delta = seq.tracker.add(token)
                    generated += 1
                    ids.append(token)
                    if seq.tracker.stopped:
                        seq.finish_reason = "stop"
                    elif len(seq.tracker.ids) >= params.max_new_tokens:
                        seq.finish_reason = "length"
                    if delta:
                        yield Piece(seq.request, seq.sample, delta)
                if seq.finish_reason:
                    break
            if seq.finish_reason:
                break
    seq.finish_reason = seq.finish_reason or "length"  # ran out of context
    tail = seq.tracker.finish()
    if tail:
        yield Piece(seq.request, seq.sample, tail)
    yield _completion(seq, started)
