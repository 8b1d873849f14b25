"""Which model translates when --model is not given: a bundled one for the pair, or a clear error."""

from __future__ import annotations

from gptcli import bundled
from gptcli.errors import UsageError
from gptcli.translation.languages import Language, find

KINDS_HINT = (
    "Pass --model with a translation model: a Marian folder or Hub id such as Helsinki-NLP/opus-mt-{src}-{tgt}, "
    "an NLLB, M2M100, mBART-50 or T5 model, or an instruction-following chat model."
)


def default_model(source: Language | None, target: Language) -> tuple[str, Language]:
    """The bundled model for (source, target) and its source language; a UsageError when there is none."""
    for (src, tgt), name in bundled.DEFAULT_TRANSLATION_MODELS.items():
        if tgt == target.code and (source is None or src == source.code) and bundled.path_of(name):
            language = find(src)
            assert language is not None  # the table names known languages
            return name, language
    pair = f"{source.name}→{target.name}" if source else f"into {target.name}"
    raise UsageError(
        f"no bundled model translates {pair}.",
        hint=KINDS_HINT.format(src=source.code if source else "SRC", tgt=target.code),
    )
