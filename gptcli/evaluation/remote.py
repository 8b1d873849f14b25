"""Perplexity through an OpenAI-compatible server (`gptcli eval -m openai:NAME`).

The server tokenizes: each document is sent whole to `/v1/completions` with `echo` and
`logprobs` (`gptcli.remote.score_remote`), and every token it returns a log-probability for is
scored, so token counts are the server's. A server whose tokenizer puts a BOS token in front
scores the first word too, as gptcli does locally; one that does not (GPT-2 on vLLM) leaves the
first token unscored, and its bytes are then not counted in bits per byte (the local rule for a
tokenizer without a prefix token). Rolling windows need the tokens before the request, so they are
not available: a document must fit the server's context.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from gptcli.data import Document
from gptcli.evaluation.perplexity import DocScore, ModelScore
from gptcli.remote import RemoteModel, TokenScores, score_remote


def evaluate_remote(
    rm: RemoteModel,
    documents: Iterable[Document],
    *,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_doc: Callable[[DocScore], None] | None = None,
) -> ModelScore:
    """Score every document with the server's log-probabilities; `batch_size` documents in flight.

    Each document's score goes to `on_doc` when given (in input order), else into `score.docs`."""
    started = time.perf_counter()
    score = ModelScore(model=rm.name, device="remote", dtype="unknown", context=0, stride=0)
    slots: list[DocScore] = []  # one per document read, in input order; sent ones are filled in
    sent: deque[tuple[int, Document]] = deque()

    def texts() -> Iterator[str]:
        for doc in documents:
            slots.append(DocScore(id=doc.id, source=doc.source, skipped="no token to score"))
            if doc.text.strip():
                sent.append((len(slots) - 1, doc))
                yield doc.text

    budget = max_tokens
    kept = None  # with --max-tokens: the slots up to the document that filled the sample
    results = score_remote(rm, texts(), concurrency=batch_size)
    try:
        for scores in results:
            slot, doc = sent.popleft()
            item = slots[slot] = _doc_score(doc, scores, budget)
            if progress is not None and item.tokens:
                progress(item.tokens)
            if budget is not None:
                budget -= item.tokens
                if budget <= 0:
                    kept = slot + 1  # the sample is full; documents read ahead are not part of it
                    break
    finally:
        results.close()
    for item in slots[:kept] if kept is not None else slots:
        score.add(item)
        if on_doc is not None:
            on_doc(item)
        else:
            score.docs.append(item)
    score.seconds = time.perf_counter() - started
    return score


def _doc_score(doc: Document, scores: TokenScores, budget: int | None) -> DocScore:
    item = DocScore(id=doc.id, source=doc.source)
    scored = [i for i, lp in enumerate(scores.logprobs) if lp is not None]
    if budget is not None and len(scored) > budget:
        scored, item.truncated = scored[:budget], True
    if not scored:
        item.skipped = "no token to score"
        return item
    values = [scores.logprobs[i] for i in scored]
    item.nll_sum = -math.fsum(v for v in values if v is not None)
    item.tokens = len(scored)
    begin = scores.offsets[scored[0]]
    last = scored[-1]
    end = scores.offsets[last + 1] if item.truncated and last + 1 < len(scores.offsets) else len(doc.text)
    item.bytes = len(doc.text[begin:end].encode("utf-8"))
    return item
