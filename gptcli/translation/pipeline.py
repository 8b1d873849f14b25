"""The line-aligned translation pipeline: lines in, exactly one translation per line out, in order.

Lines are gathered into batches of up to `batch_size` pieces (a line longer
than the model's context is cut at sentence boundaries into several pieces, a
sentence longer than that at clauses, then words),
translated together through the shared generation core, and handed back in
input order as soon as a line and every line before it are done. Empty lines
cost nothing and come back empty.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gptcli.errors import GptcliError, UsageError
from gptcli.generation import Completion, Request, RunStats, stream_generate
from gptcli.remote import RemoteModel
from gptcli.sampling import SamplingParams
from gptcli.translation.families import Plan
from gptcli.translation.languages import NO_SPACE
from gptcli.translation.prompts import instruction, prompt_ids, stop_strings
from gptcli.translation.sources import Line, LineFeed

if TYPE_CHECKING:
    from gptcli.loading import LoadedModel
    from gptcli.speculative import Speculation

# After ., !, ?, … (then whitespace), or after CJK full stops (no space follows them).
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|(?<=[。！？])")
# A sentence too long for the context is cut further: after clause punctuation, then between words.
_CLAUSE_END = re.compile(r"(?<=[,;:–—])\s+|(?<=[，；：、])")
_WORD_GAP = re.compile(r"\s+")
# Characters that some reader would count as a line break: never let one into a translation.
_BREAKS = re.compile(r"[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")
# Output room for a causal model: the translation may be this many times the source's tokens.
_OUTPUT_RATIO = 1.5
# A sentence this many times longer (in tokens) than the longest source the model was trained on
# (its card's longest_training_source) is far outside what it learnt: warn once per run.
FAR_OUTSIDE = 2.0


@dataclass
class Translation:
    line: Line
    text: str  # the translation, one line
    pieces: int = 0  # how many generation requests it took (0 for an empty line)
    # Said on stderr with the line: a sentence had to be cut to fit the context, or (once per
    # run) a sentence is far longer than anything the model was trained on.
    warnings: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    finish_reasons: list[str] = field(default_factory=list)

    def to_record(self, model: str, plan: Plan) -> dict:
        """The --json object: the input record (or line number and text) plus "translation"."""
        if self.line.record is not None:
            out = dict(self.line.record)
        else:
            out = {"line": self.line.number, "text": self.line.text}
        out["translation"] = self.text
        out.update(model=model, to=plan.target.code)
        if plan.source is not None:
            out["from"] = plan.source.code
        return out


@dataclass
class TranslateStats:
    lines: int = 0
    pieces: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    speculative: bool = False  # speculative decoding: tokens drafted, and how many the model kept
    drafted_tokens: int = 0
    accepted_tokens: int = 0

    usage_known: bool = True  # False: a remote server did not report token counts

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self) -> str:
        tokens = (
            f"{self.prompt_tokens} prompt tokens, {self.completion_tokens} generated"
            if self.usage_known
            else "token counts unknown"
        )
        text = (
            f"translated {self.lines} lines ({self.pieces} pieces, {tokens}) in {self.elapsed_s:.2f} s: "
            f"{self.lines_per_s:.1f} lines/s"
        )
        if self.speculative:
            rate = f"{self.accepted_tokens / self.drafted_tokens:.0%}" if self.drafted_tokens else "n/a"
            text += f", drafted {self.drafted_tokens} tokens, accepted {self.accepted_tokens} ({rate})"
        return text


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s.strip()]


def _units(text: str, boundary: re.Pattern) -> list[str]:
    """`text` cut at `boundary`, each unit keeping the separator after it (so joining them gives `text`)."""
    units, start = [], 0
    for match in boundary.finditer(text):
        if match.end() > start and match.start() > start:
            units.append(text[start : match.end()])
            start = match.end()
    units.append(text[start:])
    return [u for u in units if u.strip()]


def _halves(text: str) -> list[str]:
    middle = len(text) // 2
    return [text[:middle], text[middle:]]


# Coarsest first: sentences, clauses, words, and for a single word longer than the context
# (a URL, a run of CJK without punctuation) halves of it, down to what fits.
_LEVELS = (
    lambda t: _units(t, _SENTENCE_END),
    lambda t: _units(t, _CLAUSE_END),
    lambda t: _units(t, _WORD_GAP),
    _halves,
)


def one_line(text: str) -> str:
    return " ".join(_BREAKS.sub(" ", text).split())


class Translator:
    """Translates lines with one loaded model and one plan (from `families.make_plan`)."""

    def __init__(
        self,
        lm: LoadedModel | RemoteModel,
        plan: Plan,
        params: SamplingParams,
        *,
        max_new_tokens: int | None = None,
        batch_size: int = 16,
        speculation: Speculation | None = None,
    ):
        self.lm, self.plan, self.params = lm, plan, params
        self.speculation = speculation  # decode each piece speculatively (gptcli.speculative)
        self.max_new_tokens = max_new_tokens  # None: sized from each source's length
        self.batch_size = batch_size
        self.joiner = "" if plan.target.code in NO_SPACE else " "
        self.stats = TranslateStats()
        self._warnings: dict[int, list[str]] = {}  # line number -> its warnings, until the line is translated
        self._warned_outside = False
        self.budget: int | None = None  # a remote model: the server checks lengths, lines are not split
        if isinstance(lm, RemoteModel):
            return
        context = lm.context_length
        if plan.seq2seq:
            # Room for the prefix, a language token and end-of-sequence on the encoder side.
            self.budget = context - self.count(plan.prefix) - 3
        else:
            overhead = len(prompt_ids(lm, plan, ""))
            self.budget = int((context - overhead - 8) / (1 + _OUTPUT_RATIO))
        if self.budget < 1:
            raise UsageError(
                f"model '{lm.name}' has a context of {context} tokens: too short for a translation prompt."
            )

    # ------------------------------------------------------------------ pieces

    @property
    def local(self) -> LoadedModel:
        assert not isinstance(self.lm, RemoteModel), "a remote model's tokenizer is the server's"
        return self.lm

    def count(self, text: str) -> int:
        if not text:
            return 0
        return len(self.local.tokenizer(text, add_special_tokens=False)["input_ids"])

    def pieces(self, line: Line) -> list[str]:
        """The text of a line as pieces that fit the context (see `split`)."""
        return self.split(line)[0]

    def split(self, line: Line) -> tuple[list[str], int]:
        """The line as pieces that fit the context, and how many of its sentences had to be cut.

        Pieces are whole sentences, packed up to the budget; a sentence that does not fit
        alone is cut at clauses, then words (then within a word) and its parts packed the
        same way, so any line can be translated.
        """
        text = line.text.strip()
        if not text:
            return [], 0
        if self.budget is None or self.count(text) <= self.budget:
            return [text], 0
        cut = [0]
        return self._fit(text, 0, cut), cut[0]

    def _fit(self, text: str, level: int, cut: list[int]) -> list[str]:
        assert self.budget is not None  # only local models are cut to fit
        chunks: list[str] = []
        current = ""
        for unit in _LEVELS[level](text):
            if self.count(unit.strip()) > self.budget and len(unit.strip()) > 1:
                if level == 0:
                    cut[0] += 1
                if current.strip():
                    chunks.append(current.strip())
                current = ""
                chunks.extend(self._fit(unit.strip(), min(level + 1, len(_LEVELS) - 1), cut))
                continue
            joined = current + unit
            if current.strip() and self.count(joined.strip()) > self.budget:
                chunks.append(current.strip())
                joined = unit
            current = joined
        if current.strip():
            chunks.append(current.strip())
        return chunks

    def _warning(self, line: Line, cut: int) -> str:
        what = "a sentence" if cut == 1 else f"{cut} sentences"
        return (
            f"line {line.number}: {what} too long for the model's context ({self.local.context_length} tokens; "
            f"source pieces of at most {self.budget}) cut at clauses or words and translated in parts."
        )

    def outside_warning(self, line: Line) -> str | None:
        """A warning, the first time only, for a line with a sentence far longer than the model's training sources."""
        limit = self.plan.trained_source_tokens
        if limit is None or self._warned_outside or not line.text.strip():
            return None
        longest = max(self.count(s.strip()) for s in split_sentences(line.text.strip()))
        if longest <= FAR_OUTSIDE * limit:
            return None
        self._warned_outside = True
        return (
            f"line {line.number}: a sentence of {longest} tokens, far longer than any model '{self.lm.name}' "
            f"was trained on (at most {limit}); its translation is likely to be wrong. "
            "Shorter sentences work better (said once)."
        )

    def request(self, text: str) -> Request:
        if isinstance(self.lm, RemoteModel):
            # The server's tokenizer is unknown here: its tokens are rarely shorter than a byte or two,
            # so twice the source's tokens stays under its UTF-8 length plus 10.
            wanted = self.max_new_tokens or len(text.encode("utf-8")) + 10
            message = {"role": "user", "content": instruction(text, self.plan)}
            return Request(messages=[message], params=self.params.updated(max_new_tokens=wanted))
        wanted = self.max_new_tokens or 2 * self.count(text) + 10
        context = self.lm.context_length
        if self.plan.seq2seq:
            params = self.params.updated(max_new_tokens=max(1, min(wanted, context - 2)))
            return Request(encoder_text=self.plan.prefix + text, params=params)
        ids = prompt_ids(self.lm, self.plan, text)
        params = self.params.updated(
            max_new_tokens=max(1, min(wanted, context - len(ids))), stop=stop_strings(self.plan)
        )
        return Request(prompt_ids=ids, params=params)

    def _text(self, event: Completion) -> str:
        forced = self.plan.forced_bos_token_id
        if forced is None or forced not in event.token_ids:
            return event.text
        # Some tokenizers (M2M100) don't count their language tokens as special, so the
        # forced target-language token would be decoded as text: drop it.
        return self.local.tokenizer.decode([t for t in event.token_ids if t != forced], skip_special_tokens=True)

    # ------------------------------------------------------------------ the loop

    def run(self, feed: LineFeed) -> Iterator[Translation]:
        started = time.perf_counter()
        try:
            while True:
                batch, error = self._gather(feed)
                if batch:
                    yield from self._translate(batch)
                if error is not None:
                    raise error
                if not batch and feed.ended:
                    return
        finally:
            self.stats.elapsed_s = time.perf_counter() - started

    def _gather(self, feed: LineFeed) -> tuple[list[tuple[Line, list[str]]], GptcliError | None]:
        """Lines for the next batch: at least one (waiting for it), then whatever is ready, up to batch_size pieces.

        A failure (a bad input line) ends the batch; it is raised after the lines before it are written.
        """
        batch: list[tuple[Line, list[str]]] = []
        pieces = 0
        try:
            line = feed.get(timeout=None)
            while line is not None:
                chunks, cut = self.split(line)
                said = [w for w in (self._warning(line, cut) if cut else None, self.outside_warning(line)) if w]
                if said:
                    self._warnings[line.number] = said
                batch.append((line, chunks))
                pieces += len(chunks)
                if pieces >= self.batch_size:
                    break
                line = feed.get(timeout=0)
                if line is None and not feed.ended:
                    line = feed.get(timeout=0.005)  # a reader thread just behind us: give it a moment
        except GptcliError as exc:
            return batch, exc
        return batch, None

    def _translate(self, batch: list[tuple[Line, list[str]]]) -> Iterator[Translation]:
        requests: list[Request] = []
        owners: list[int] = []  # request index -> batch index
        results = []
        for i, (line, chunks) in enumerate(batch):
            results.append(Translation(line, "", pieces=len(chunks), warnings=self._warnings.pop(line.number, [])))
            for chunk in chunks:
                requests.append(self.request(chunk))
                owners.append(i)
        parts: list[list[str | None]] = [[None] * len(chunks) for _, chunks in batch]
        first_piece = [owners.index(i) if chunks else -1 for i, (_, chunks) in enumerate(batch)]
        remaining = [len(chunks) for _, chunks in batch]
        done = 0

        def ready() -> Iterator[Translation]:
            nonlocal done
            while done < len(batch) and remaining[done] == 0:
                result = results[done]
                line = result.line
                lead = line.text[: len(line.text) - len(line.text.lstrip())]
                body = self.joiner.join(p for p in parts[done] if p)
                result.text = lead + body if body else ""
                self.stats.lines += 1
                done += 1
                yield result

        yield from ready()
        if requests:
            run_stats = RunStats()
            events = stream_generate(
                self.lm, requests, batch_size=self.batch_size, stats=run_stats, speculation=self.speculation
            )
            for event in events:
                if not isinstance(event, Completion):
                    continue
                i = owners[event.request]
                parts[i][event.request - first_piece[i]] = one_line(self._text(event))
                results[i].completion_tokens += event.completion_tokens
                results[i].finish_reasons.append(event.finish_reason)
                remaining[i] -= 1
                yield from ready()
            self.stats.pieces += len(requests)
            self.stats.prompt_tokens += run_stats.prompt_tokens
            self.stats.completion_tokens += run_stats.completion_tokens
            self.stats.speculative = self.stats.speculative or run_stats.speculative
            self.stats.drafted_tokens += run_stats.drafted_tokens
            self.stats.accepted_tokens += run_stats.accepted_tokens

            self.stats.usage_known = self.stats.usage_known and run_stats.usage_known
        yield from ready()
