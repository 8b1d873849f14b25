"""Score text with a causal language model: NLL per token, perplexity, bits per byte.

The rule of lm-evaluation-harness's `loglikelihood_rolling`, so numbers compare
with it: each document is tokenized without special tokens, the tokenizer's BOS
token (else its EOS token, the end-of-text separator GPT-2-style models are
trained with before every document) is put in front, and every token of the text
is scored, cut into rolling windows (windows.py). Windows are sorted by length and
run in batches, right-padded: in a causal model a token never attends to positions
after it, so padding on the right changes nothing for the real tokens and needs no
attention mask.

Streaming: documents are read, tokenized and scored a chunk at a time (whole
documents; the first chunk about CHUNK_FIRST tokens, each next one twice the last
up to CHUNK_TOKENS), and each document's score is handed to `on_doc` as its chunk
finishes, so memory does not grow with the corpus and the first records come
within seconds. A corpus that fits in the first chunk is batched as it always was. The tokens can come from the
token cache (`cache`, a gptcli.tokcache entry read through numpy.memmap) instead
of the tokenizer: the same ids, without tokenizing again.

Bytes for bits per byte: all the UTF-8 bytes of the text (up to the last kept
token when --max-tokens cuts it). A tokenizer with neither BOS nor EOS has no
prefix: its first token is then only context and its bytes are not counted.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptcli.data import Document
from gptcli.errors import GptcliError, UsageError
from gptcli.evaluation.windows import Window, plan_windows

if TYPE_CHECKING:
    from gptcli.loading import LoadedModel
    from gptcli.tokcache import Entry

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
    docs: list[DocScore] = field(default_factory=list)  # empty when the scores were streamed to on_doc
    seconds: float = 0.0  # tokenizing + scoring (not loading)
    documents: int = 0  # documents scored
    skipped: int = 0  # documents with no token to score
    tokens: int = 0
    bytes: int = 0
    # Shewchuk partials of the per-document NLL sums: math.fsum of them is exactly math.fsum of
    # every document's value, without keeping one float per document
    _partials: list[float] = field(default_factory=list, repr=False)
    _special: float = field(default=0.0, repr=False)  # inf/nan sums, which partials cannot hold

    def add(self, doc: DocScore) -> None:
        if doc.skipped:
            self.skipped += 1
            return
        self.documents += 1
        self.tokens += doc.tokens
        self.bytes += doc.bytes
        if math.isfinite(doc.nll_sum):
            _add_exact(self._partials, doc.nll_sum)
        else:
            self._special += doc.nll_sum

    @property
    def scored(self) -> list[DocScore]:
        return [d for d in self.docs if not d.skipped]

    @property
    def nll_sum(self) -> float:
        return math.fsum(self._partials) + self._special

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_record(self) -> dict:
        """The `eval --json` summary object."""
        return {
            "model": self.model,
            "documents": self.documents,
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


def _add_exact(partials: list[float], x: float) -> None:
    """Add x to Shewchuk's non-overlapping partials (the msum recipe math.fsum is built on):
    their exact sum stays the exact sum of everything added."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


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
    ids: Any  # the scored sequence: a list, or a _Prefixed array from the token cache
    windows: list[Window]


# Tokens (about) scored per chunk. A corpus up to CHUNK_FIRST tokens is tokenized, planned and sorted
# into batches whole, as before streaming; a larger one a chunk at a time, chunks doubling up to
# CHUNK_TOKENS: small first chunks bring the first --per-doc records soon (a GPT-2-sized model scores a
# few hundred tokens a second on a laptop CPU), large later ones keep windows of similar length
# together, and memory is bounded by the largest chunk.
CHUNK_FIRST = 1 << 13
CHUNK_TOKENS = 1 << 18


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
    on_doc: Callable[[DocScore], None] | None = None,
    cache: Entry | None = None,
) -> ModelScore:
    """Score every document with `lm` (a LoadedModel) in windows of `context` tokens (default: the
    model's context, at most MAX_DEFAULT_CONTEXT). `progress(n)` is called as tokens are scored;
    `on_plan(total)` with the number of tokens that will be scored, when known: before scoring when
    the corpus is one chunk or `cache` gives the counts, else not at all.

    `on_doc(score)`: each document's score, in document order, as soon as its chunk is scored; the
    returned ModelScore then holds only the totals (no `docs`), so memory stays flat.
    `cache`: the token cache entry of these documents under lm's tokenizer (gptcli.tokcache): the
    tokens of each non-blank document come from it instead of the tokenizer."""
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
    score = ModelScore(
        model=lm.name,
        device=str(lm.runtime.device),
        dtype=str(lm.runtime.dtype).replace("torch.", ""),
        context=context,
        stride=stride,
    )
    if cache is not None and on_plan is not None:
        on_plan(_cached_total(cache, max_tokens))
        on_plan = None
    for chunk in _chunks(_tokenize(lm.tokenizer, documents, max_tokens, cache), context, stride):
        if on_plan is not None:
            # the first chunk: the plan is known now only if it is the whole corpus
            if chunk.last:
                on_plan(chunk.targets)
            on_plan = None
        _score(lm, chunk.items, batch_size, progress)
        for it in chunk.items:
            score.add(it.doc)
            if on_doc is not None:
                on_doc(it.doc)
            else:
                score.docs.append(it.doc)
    score.seconds = time.perf_counter() - started
    return score


@dataclass
class _Chunk:
    items: list[_Tokenized]
    targets: int  # tokens to score in it
    last: bool  # nothing follows


def _chunks(items: Iterable[_Tokenized], context: int, stride: int) -> Iterator[_Chunk]:
    """Whole documents, windows planned, in chunks of CHUNK_FIRST scored tokens or so, doubling up to CHUNK_TOKENS."""
    buffer: list[_Tokenized] = []
    targets = 0
    limit = min(CHUNK_FIRST, CHUNK_TOKENS)
    for item in items:
        if targets >= limit:
            yield _Chunk(buffer, targets, False)
            buffer, targets, limit = [], 0, min(2 * limit, CHUNK_TOKENS)
        item.windows = plan_windows(len(item.ids), context, stride)
        if not item.windows:
            item.doc.skipped = "no token to score"
        targets += sum(w.targets for w in item.windows)
        buffer.append(item)
    yield _Chunk(buffer, targets, True)


# --- the token cache ------------------------------------------------------------

# Inputs at least this large are tokenized into the token cache (default root) when no valid entry
# exists yet and the whole corpus is evaluated: the next eval of them (another checkpoint, another
# run) reads the tokens back instead of tokenizing again. Smaller ones are tokenized as read.
EVAL_CACHE_MIN_BYTES = 64 << 20


def token_cache_for(
    tokenizer,
    paths: list[Path],
    documents: Iterable[Document],
    text_field: str,
    *,
    root: Path | None = None,
    build: bool | None = None,
    note: Callable[[str], None] | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> Entry | None:
    """The token cache entry to evaluate these files from under this tokenizer, or None (tokenize as read).

    A valid entry is always used. Missing (or stale), one is built when `build` is True (--cache
    given), or when `build` is None and the files hold at least EVAL_CACHE_MIN_BYTES; never when
    False (--max-tokens/--max-docs: only the start of the corpus is read). The first document is
    tokenized both ways as a check that the cache matches this tokenizer's own call."""
    from gptcli import tokcache

    if any(str(p) == "-" for p in paths):
        return None
    if getattr(tokenizer, "backend_tokenizer", None) is None or getattr(tokenizer, "eos_token_id", None) is None:
        return None  # the cache is built with the tokenizers library and ends documents with EOS
    entry = tokcache.lookup(paths, tokenizer, text_field, root)
    if entry is None:
        big = sum(p.stat().st_size for p in paths) >= EVAL_CACHE_MIN_BYTES
        if not (build or (build is None and big)):
            return None
        entry = tokcache.ensure(paths, tokenizer, text_field, root=root, what="eval data", note=note, progress=progress)
    first = next((d for d in documents if d.text.strip()), None)
    if first is not None and len(first.text) <= 1 << 20:
        cached = _CacheReader(entry).next()
        if _encode(tokenizer, [first.text])[0][0] != [int(t) for t in cached]:
            if note is not None:
                note(f"token cache {entry.folder} does not match this tokenizer's output; tokenizing instead.")
            return None
    return entry


# --- tokenizing and byte accounting -------------------------------------------


def prefix_token(tokenizer) -> int | None:
    """The token each document is scored after: BOS, else EOS (lm-evaluation-harness's `prefix_token_id`)."""
    for value in (getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            return value
    return None


TOKENIZE_GROUP = 64  # documents tokenized per call: --max-tokens stops reading a lazy document stream early


def _tokenize(
    tokenizer, documents: Iterable[Document], max_tokens: int | None, cache: Entry | None = None
) -> Iterator[_Tokenized]:
    """Each document tokenized independently (so grouping them changes no token), a group at a time;
    with `max_tokens`, documents past the budget are never read. With `cache`, the tokens of each
    non-blank document are the next document of the cache (which holds exactly those, in order)."""
    from itertools import islice

    prefix = prefix_token(tokenizer)
    head = [] if prefix is None else [prefix]
    unscored = 0 if head else 1  # without a prefix the first text token is only context
    budget = max_tokens  # text tokens (the prefix is not part of the text)
    cached = _CacheReader(cache) if cache is not None else None
    stream = iter(documents)
    while group := list(islice(stream, TOKENIZE_GROUP)):
        ids_of: list[Any] = [cached.next() if cached is not None and d.text.strip() else None for d in group]
        todo = [i for i, ids in enumerate(ids_of) if ids is None]
        encoded = _encode(tokenizer, [group[i].text for i in todo])
        for i, enc in zip(todo, encoded):
            ids_of[i] = enc
        for doc, ids in zip(group, ids_of):
            offsets = None
            if isinstance(ids, tuple):  # (ids, offsets) from the tokenizer
                ids, offsets = ids
            n = len(ids)
            cut = False
            if budget is not None:
                if budget <= unscored:
                    return  # the sample is full; later documents are not part of it
                if n > budget:
                    ids, n, cut = ids[:budget], budget, True
                budget -= n
            score = DocScore(id=doc.id, source=doc.source, truncated=cut)
            if n > unscored:
                if cut and offsets is None and cached is not None:
                    offsets = _encode(tokenizer, [doc.text])[0][1]  # the one cut document: where its kept text ends
                score.bytes = _kept_bytes(tokenizer, doc.text, ids, offsets, cut)
                if unscored:
                    score.bytes -= _first_token_bytes(tokenizer, doc.text, int(ids[0]), offsets)
            seq = _Prefixed(prefix, ids) if cached is not None and not isinstance(ids, list) else head + list(ids)
            yield _Tokenized(score, seq, [])


def _encode(tokenizer, texts: list[str]) -> list[tuple[list[int], Any]]:
    """(ids, offsets or None) of each text, no special tokens."""
    if not texts:
        return []
    with_offsets = bool(getattr(tokenizer, "is_fast", False))
    enc = tokenizer(
        texts,
        add_special_tokens=False,
        return_attention_mask=False,
        return_offsets_mapping=with_offsets,
        verbose=False,
    )
    return [(list(enc["input_ids"][i]), enc["offset_mapping"][i] if with_offsets else None) for i in range(len(texts))]


class _CacheReader:
    """The documents of a token cache entry in order: each one's tokens (without the end-of-text id
    the cache puts after it). Read from tokens.bin a block at a time into memory rather than paged in
    through the memmap: pages of a memmap read end to end stay mapped (and count in the process's
    resident memory) until the process ends; a block is freed once its documents are scored. Only a
    document longer than a block is a slice of the memmap."""

    BLOCK = 1 << 22  # tokens
    END_BLOCK = 1 << 16  # document ends

    def __init__(self, entry: Entry):
        import numpy as np

        self.entry, self.n, self.i = entry, entry.n_documents, 0
        self.dtype = np.dtype(entry.manifest["dtype"])
        self.block: Any = None
        self.block_start = 0
        self.ends: Any = None
        self.ends_start = 0

    def _read(self, name: str, dtype: Any, start: int, count: int) -> Any:
        import numpy as np

        with open(self.entry.folder / name, "rb") as f:
            f.seek(start * dtype.itemsize)
            return np.fromfile(f, dtype=dtype, count=count)

    def _end(self, i: int) -> int:
        """End offset (after its eot) of document i, from docs.bin a block at a time."""
        import numpy as np

        from gptcli.tokcache import DOCS

        if self.ends is None or not self.ends_start <= i < self.ends_start + len(self.ends):
            self.ends = self._read(DOCS, np.dtype(np.uint64), i, min(self.END_BLOCK, self.n - i))
            self.ends_start = i
        return int(self.ends[i - self.ends_start])

    def next(self) -> Any:
        from gptcli.tokcache import TOKENS

        if self.i >= self.n:
            raise GptcliError(
                "the token cache holds fewer documents than the files: it does not match them.",
                hint="Delete the cache folder, or evaluate without --cache.",
            )
        begin = self._end(self.i - 1) if self.i else 0
        end = self._end(self.i) - 1  # the eot the cache adds after each document is not text
        self.i += 1
        if end - begin > self.BLOCK:
            return self.entry.tokens()[begin:end]
        if self.block is None or end > self.block_start + len(self.block):
            count = min(self.BLOCK, self.entry.n_tokens - begin)
            self.block = self._read(TOKENS, self.dtype, begin, count)
            self.block_start = begin
        return self.block[begin - self.block_start : end - self.block_start]


class _Prefixed:
    """The scored sequence [prefix] + ids, without copying ids (a memmap slice) into memory."""

    def __init__(self, prefix: int | None, ids: Any):
        self.prefix, self.ids = prefix, ids
        self.shift = 0 if prefix is None else 1

    def __len__(self) -> int:
        return len(self.ids) + self.shift

    def __getitem__(self, span: slice) -> Any:
        import numpy as np

        begin, end = span.start or 0, span.stop if span.stop is not None else len(self)
        if begin == 0 and self.shift:
            return np.concatenate(
                (np.array([self.prefix], dtype=np.int64), np.asarray(self.ids[: end - 1], dtype=np.int64))
            )
        return np.asarray(self.ids[begin - self.shift : end - self.shift], dtype=np.int64)


def _cached_total(entry: Entry, max_tokens: int | None) -> int:
    """Tokens that will be scored, from the cache's counts (blank documents, which the cache does not
    hold, aside): every text token, i.e. the cache's tokens less the end-of-text id after each
    document (the cache serves only tokenizers with an EOS token, so there is always a prefix)."""
    total = entry.n_tokens - entry.n_documents
    return total if max_tokens is None else min(total, max_tokens)


def _first_token_bytes(tokenizer, text: str, first_id: int, offsets) -> int:
    """Bytes of the text the (unscored) first token covers, when there is no prefix token."""
    piece = tokenizer.decode([first_id])
    if piece and "\ufffd" not in piece and text.startswith(piece):
        return len(piece.encode("utf-8"))
    if offsets is not None:  # a fragment of a multi-byte character: count the whole character
        return len(text[: offsets[0][1]].encode("utf-8"))
    return len(piece.encode("utf-8"))


def _kept_bytes(tokenizer, text: str, ids: Any, offsets, cut: bool) -> int:
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
                ids[row, : w.length] = torch.as_tensor(items[i].ids[w.begin : w.end], dtype=torch.long)
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
                labels = torch.as_tensor(items[i].ids[w.end - w.targets + 1 : w.end + 1], dtype=torch.long)
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
