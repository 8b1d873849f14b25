"""BLEU and chrF against reference translations, with sacrebleu.

References come as a text file with one reference per input line, or as a TSV
of `source<TAB>reference` pairs (further columns are ignored). In a TSV, rows
with the same source are one sentence with several references, as in Tatoeba
where one English sentence often has several good French translations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptcli.errors import InputError, UsageError
from gptcli.fileio import split_lines
from gptcli.inputs import read_text_file
from gptcli.translation.sources import Line

if TYPE_CHECKING:
    from gptcli.translation.families import Plan


@dataclass
class References:
    path: str
    refs: list[list[str]]  # per input sentence, its references
    sources: list[str] | None = None  # from a TSV: the sentences to translate

    def source_lines(self) -> list[Line]:
        return [Line(i, text) for i, text in enumerate(self.sources or [], start=1)]


def is_pairs_file(path: Path | str) -> bool:
    return str(path).lower().endswith(".tsv")


def read_references(path: Path | str) -> References:
    text = read_text_file(path)
    lines = split_lines(text)
    if not is_pairs_file(path):
        return References(str(path), [[line.strip()] for line in lines])
    order: dict[str, list[str]] = {}
    for number, row in enumerate(lines, start=1):
        if not row.strip():
            continue
        cols = row.split("\t")
        if len(cols) < 2 or not cols[0].strip():
            raise InputError(f"{path} line {number} is not 'source<TAB>reference'.")
        order.setdefault(cols[0].strip(), []).append(cols[1].strip())
    if not order:
        raise UsageError(f"{path} has no source<TAB>reference pairs.")
    return References(str(path), list(order.values()), list(order))


def score(hypotheses: list[str], references: list[list[str]]) -> dict:
    """Corpus BLEU and chrF (sacrebleu defaults: 13a tokenizer, chrF2), with their signatures, and exact matches."""
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise InputError(
            f"{len(hypotheses)} translations but {len(references)} references: they must pair up line by line."
        )
    width = max((len(r) for r in references), default=1)
    # sacrebleu takes one stream per reference slot; None marks a missing one.
    streams: list[list[Any]] = [[r[k] if k < len(r) else None for r in references] for k in range(width)]
    bleu, chrf = BLEU(), CHRF()
    b = bleu.corpus_score(hypotheses, streams)
    c = chrf.corpus_score(hypotheses, streams)
    return {
        "bleu": round(b.score, 2),
        "chrf": round(c.score, 2),
        # Translations equal to one of their references (surrounding spaces aside).
        "exact": sum(h.strip() in {x.strip() for x in r} for h, r in zip(hypotheses, references)),
        "sentences": len(hypotheses),
        "references": sum(len(r) for r in references),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def score_record(refs: References, hypotheses: list[str], model: str, plan: Plan, lines_per_s: float) -> dict:
    """The `translate --references` result: BLEU and chrF of the run, with what produced them."""
    # Pairs whose source line was empty carry nothing to score.
    pairs = [(h, r) for h, r in zip(hypotheses, refs.refs) if any(r)]
    result = score([h for h, _ in pairs], [r for _, r in pairs])
    result.update(model=model, to=plan.target.code, lines_per_s=round(lines_per_s, 2))
    if plan.source is not None:
        result["from"] = plan.source.code
    return result
