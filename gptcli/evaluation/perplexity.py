"""Score text with a causal language model: NLL per token, perplexity, bits per byte.

The rule of lm-evaluation-harness's `loglikelihood_rolling`, so numbers compare
with it: each document is tokenized without special tokens, the tokenizer's BOS
token (else its EOS token, the end-of-text separator GPT-2-style models are
trained with before every document) is put in front, and every token of the text
is scored, cut into rolling windows (windows.py). Windows of all documents are
sorted by length and run in batches, right-padded: in a causal model a token
never attends to positions after it, so padding on the right changes nothing for
the real tokens and needs no attention mask.

Bytes for bits per byte: all the UTF-8 bytes of the text (up to the last kept
token when --max-tokens cuts it). A tokenizer with neither BOS nor EOS has no
prefix: its first token is then only context and its bytes are not counted.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gptcli.data import Document
from gptcli.errors import UsageError
from gptcli.evaluation.windows import Window, plan_windows

if TYPE_CHECKING:
    from gptcli.loading import LoadedModel

# Most logits one forward pass may return, in bytes: bounds memory with big
# vocabularies (GPT-2: 50,257 x 1,024 tokens = 51 M values per full window, so
# 5 windows per batch in bfloat16, 2 in float32), while batching several
# windows stays faster per window than one at a time.
LOGIT_BUDGET_BYTES = 512 << 20
CONCAT_SEPARATOR = "\n\n"
# Default window cap: models with 32k-128k positions would need tens of GB of
# logits and attention per window; past a few thousand tokens of left context
# the scores barely move. `--context` sets it explicitly.
MAX_DEFAULT_CONTEXT = 4096
LN2 = math.log(2.0)


class _Metrics:
    """NLL, perplexity and bits per byte from `nll_sum`, `tokens` and `bytes` (both scores share them)."""

    if TYPE_CHECKING:  # fields of DocScore, properties of ModelScore

        @property
        def nll_sum(self) -> float: ...  # natural-log loss summed over the scored tokens
        @property
        def tokens(self) -> int: ...  # scored tokens
        @property
        def bytes(self) -> int: ...  # UTF-8 bytes of the scored text

    @property
    def nll(self) -> float | None:
        return self.nll_sum / self.tokens if self.tokens else None

    @property
    def ppl(self) -> float | None:
        return _exp(self.nll)

    @property
    def bits_per_byte(self) -> float | None:
        return self.nll_sum / LN2 / self.bytes if self.tokens and self.bytes else None


@dataclass
class DocScore(_Metrics):
    id: str
    source: str
    tokens: int = 0  # tokens scored: every token of the text (after the BOS/EOS prefix)
    nll_sum: float = 0.0  # nats, summed over the scored tokens
    bytes: int = 0  # UTF-8 bytes of the text the scored tokens stand for (all of it, unless cut)
    truncated: bool = False  # cut by --max-tokens
    skipped: str | None = None  # why nothing was scored

    def to_record(self, model: str) -> dict:
        """The `eval --per-doc` object."""
        rec = {
            "model": model,
            "id": self.id,
            "source": self.source,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "nll": _num(self.nll),
            "ppl": _num(self.ppl),
            "bits_per_byte": _num(self.bits_per_byte),
        }
        if self.truncated:
            rec["truncated"] = True
        if self.skipped:
            rec["skipped"] = self.skipped
        return rec


@dataclass
class ModelScore(_Metrics):
    model: str
    device: str
    dtype: str
    context: int
    stride: int
    docs: list[DocScore] = field(default_factory=list)
    seconds: float = 0.0  # tokenizing + scoring (not loading)

    @property
    def scored(self) -> list[DocScore]:
        return [d for d in self.docs if not d.skipped]

    @property
    def skipped(self) -> int:
        return sum(1 for d in self.docs if d.skipped)

    @property
    def tokens(self) -> int:
        return sum(d.tokens for d in self.scored)

    @property
    def nll_sum(self) -> float:
        return math.fsum(d.nll_sum for d in self.scored)

    @property
    def bytes(self) -> int:
        return sum(d.bytes for d in self.scored)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_record(self) -> dict:
        """The `eval --json` summary object."""
        return {
            "model": self.model,
            "documents": len(self.scored),
            "skipped_documents": self.skipped,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "nll": _num(self.nll),
            "ppl": _num(self.ppl),
            "bits_per_byte": _num(self.bits_per_byte),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "elapsed_s": round(self.seconds, 4),
            "context": self.context,
            "stride": self.stride,
            "device": self.device,
            "dtype": self.dtype,
        }


def _num(x: float | None) -> float | None:
    """JSON has no NaN/Infinity: an undefined or infinite value is null."""
    return None if x is None or not math.isfinite(x) else x


def _exp(x: float | None) -> float | None:
    if x is None:
        return None
    return math.exp(x) if x < 700 else math.inf


def prepare_documents(documents: Iterable[Document], concat: bool) -> Iterable[Document]:
    """`--concat`: one document, the texts joined by a blank line (the separator's bytes count)."""
    if not concat:
        return documents
    documents = list(documents)
    if len(documents) <= 1:
        return documents
    sources = sorted({d.source for d in documents})
    source = sources[0] if len(sources) == 1 else f"{len(sources)} sources"
    return [Document("concat", CONCAT_SEPARATOR.join(d.text for d in documents), source)]


@dataclass
class _Tokenized:
    doc: DocScore
    ids: list[int]
    windows: list[Window]


def evaluate_model(
    lm: LoadedModel,
    documents: Iterable[Document],
    *,
    stride: int | None = None,
    context: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> ModelScore:
    """Score every document with `lm` (a LoadedModel) in windows of `context` tokens (default: the
    model's context, at most MAX_DEFAULT_CONTEXT). `progress(n)` is called as tokens are scored;
    `on_plan(total)` once with the number of tokens that will be scored."""
    if lm.is_encoder_decoder:
        raise UsageError(f"{lm.name} is an encoder-decoder model; perplexity here is for causal (decoder-only) models.")
    limit = int(lm.context_length)
    if context is not None and context > limit:
        raise UsageError(
            f"--context {context} is longer than the context of {lm.name} ({limit} tokens).",
            hint=f"Use at most {limit}.",
        )
    context = context or min(limit, MAX_DEFAULT_CONTEXT)
    if context < 2:
        raise UsageError(f"{lm.name} has a context of {context} token; at least 2 are needed.")
    if stride is None:
        stride = context
    if stride > context:
        raise UsageError(
            f"--stride {stride} is longer than the {context}-token context used for {lm.name}.",
            hint=f"Use at most {context}.",
        )
    started = time.perf_counter()
    items = _tokenize(lm.tokenizer, documents, max_tokens)
    for item in items:
        item.windows = plan_windows(len(item.ids), context, stride)
        if not item.windows:
            item.doc.skipped = "no token to score"
    if on_plan is not None:
        on_plan(sum(w.targets for it in items for w in it.windows))
    _score(lm, items, batch_size, progress)
    score = ModelScore(
        model=lm.name,
        device=str(lm.runtime.device),
        dtype=str(lm.runtime.dtype).replace("torch.", ""),
        context=context,
        stride=stride,
        docs=[it.doc for it in items],
    )
    score.seconds = time.perf_counter() - started
    return score


# --- tokenizing and byte accounting -------------------------------------------


def prefix_token(tokenizer) -> int | None:
    """The token each document is scored after: BOS, else EOS (lm-evaluation-harness's `prefix_token_id`)."""
    for value in (getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            return value
    return None


TOKENIZE_GROUP = 64  # documents tokenized per call: --max-tokens stops reading a lazy document stream early


def _tokenize(tokenizer, documents: Iterable[Document], max_tokens: int | None) -> list[_Tokenized]:
    """Each document tokenized independently (so grouping them changes no token), a group at a time;
    with `max_tokens`, documents past the budget are never read."""
    from itertools import islice

    with_offsets = bool(getattr(tokenizer, "is_fast", False))
    prefix = prefix_token(tokenizer)
    head = [] if prefix is None else [prefix]
    unscored = 0 if head else 1  # without a prefix the first text token is only context
    items: list[_Tokenized] = []
    budget = max_tokens  # text tokens (the prefix is not part of the text)
    stream = iter(documents)
    while group := list(islice(stream, TOKENIZE_GROUP)):
        enc = tokenizer(
            [d.text for d in group],
            add_special_tokens=False,
            return_attention_mask=False,
            return_offsets_mapping=with_offsets,
            verbose=False,
        )
        for i, doc in enumerate(group):
            ids = list(enc["input_ids"][i])
            offsets = enc["offset_mapping"][i] if with_offsets else None
            cut = False
            if budget is not None:
                if budget <= unscored:
                    return items  # the sample is full; later documents are not part of it
                if len(ids) > budget:
                    ids, cut = ids[:budget], True
                budget -= len(ids)
            score = DocScore(id=doc.id, source=doc.source, truncated=cut)
            if len(ids) > unscored:
                score.bytes = _kept_bytes(tokenizer, doc.text, ids, offsets, cut)
                if unscored:
                    score.bytes -= _first_token_bytes(tokenizer, doc.text, ids[0], offsets)
            items.append(_Tokenized(score, head + ids, []))
    return items


def _first_token_bytes(tokenizer, text: str, first_id: int, offsets) -> int:
    """Bytes of the text the (unscored) first token covers, when there is no prefix token."""
    piece = tokenizer.decode([first_id])
    if piece and "\ufffd" not in piece and text.startswith(piece):
        return len(piece.encode("utf-8"))
    if offsets is not None:  # a fragment of a multi-byte character: count the whole character
        return len(text[: offsets[0][1]].encode("utf-8"))
    return len(piece.encode("utf-8"))


def _kept_bytes(tokenizer, text: str, ids: list[int], offsets, cut: bool) -> int:
    if not cut:
        return len(text.encode("utf-8"))
    if offsets is not None:
        return len(text[: offsets[len(ids) - 1][1]].encode("utf-8"))
    return len(tokenizer.decode(ids, skip_special_tokens=True).encode("utf-8"))


# --- scoring ------------------------------------------------------------------


def _vocab_size(model) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(config, "vocab_size", 0) or 32000)


def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(type(model).forward).parameters
    except (TypeError, ValueError):
        return False


def _batches(jobs: list[tuple[int, Window]], batch_size: int, logit_bytes: int) -> Iterable[list[tuple[int, Window]]]:
    """Longest windows first, so a batch holds windows of similar length (little padding).
    `logit_bytes`: bytes of logits per token position."""
    jobs = sorted(jobs, key=lambda j: -j[1].length)
    batch: list[tuple[int, Window]] = []
    for job in jobs:
        width = batch[0][1].length if batch else job[1].length
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * width * logit_bytes > LOGIT_BUDGET_BYTES):
            yield batch
            batch = []
        batch.append(job)
    if batch:
        yield batch


def _score(lm: LoadedModel, items: list[_Tokenized], batch_size: int, progress: Callable[[int], None] | None) -> None:
    import torch
    import torch.nn.functional as F

    model, device = lm.model, lm.runtime.device
    keep_ok = _accepts_logits_to_keep(model)
    jobs = [(i, w) for i, it in enumerate(items) for w in it.windows]
    sums = [0.0] * len(items)
    with torch.inference_mode():
        itemsize = torch.empty((), dtype=lm.runtime.dtype).element_size()
        for batch in _batches(jobs, batch_size, _vocab_size(model) * itemsize):
            width = batch[0][1].length
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (i, w) in enumerate(batch):
                ids[row, : w.length] = torch.tensor(items[i].ids[w.begin : w.end], dtype=torch.long)
            # Logits are needed at each window's last `targets` positions.
            first_needed = min(w.length - w.targets for _, w in batch)
            kwargs = {"logits_to_keep": width - first_needed} if keep_ok else {}
            logits = model(input_ids=ids.to(device), use_cache=False, **kwargs).logits  # (B, K, V)
            shift = width - logits.shape[1]  # position of logits[:, 0]
            row_sums = []
            for row, (i, w) in enumerate(batch):
                start = w.length - w.targets - shift
                # float32 log-softmax even for bf16/fp16 models: the sum must not lose precision.
                pred = logits[row, start : start + w.targets].float()  # (targets, V)
                # Each position predicts the token after it: the last target is past the fed tokens.
                labels = torch.tensor(items[i].ids[w.end - w.targets + 1 : w.end + 1], dtype=torch.long)
                row_sums.append(F.cross_entropy(pred, labels.to(logits.device), reduction="sum"))
            del logits
            for (i, _), value in zip(batch, torch.stack(row_sums).double().tolist()):  # one device sync per batch
                sums[i] += value
            if progress is not None:
                progress(sum(w.targets for _, w in batch))
    for it, total in zip(items, sums):
        if it.windows:
            it.doc.nll_sum = total
            it.doc.tokens = sum(w.targets for w in it.windows)
