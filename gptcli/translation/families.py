"""What kind of translator a loaded model is, and how to ask it for a language pair.

The kind comes from the shared loading layer (`is_encoder_decoder`,
`has_chat_template`) and the model's config (`model_type`, T5's
`task_specific_params`, FSMT's `langs`), with the tokenizer's own language
tokens deciding what a multilingual model can produce. Names are only a last
resort for old Marian folders that don't record their languages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gptcli.errors import UsageError
from gptcli.translation.languages import Language, find

if TYPE_CHECKING:
    from gptcli.loading import LoadedModel

T5_TYPES = ("t5", "mt5", "umt5", "longt5")
CARD = "gptcli-model.json"


@dataclass
class Plan:
    """How to translate with one model from `source` to `target`."""

    kind: str  # marian, t5, m2m100, nllb, mbart, fsmt, seq2seq, chat or plain
    target: Language
    source: Language | None = None
    prefix: str = ""  # put before each source text: T5 task prefix, multilingual Marian's >>fra<< token
    src_lang_code: str | None = None  # tokenizer.src_lang for M2M100, NLLB and mBART
    forced_bos_token_id: int | None = None  # the target-language token the decoder starts with
    notes: list[str] = field(default_factory=list)
    # From the model card: tokens in the longest source sentence the model was trained on
    # (a line far beyond it gets a warning: a small model's output there is mostly nonsense).
    trained_source_tokens: int | None = None

    @property
    def seq2seq(self) -> bool:
        return self.kind not in ("chat", "plain")


def _vocab(tok: Any) -> dict[str, int]:
    try:
        vocab = dict(tok.get_vocab())
    except (AttributeError, NotImplementedError, TypeError):
        vocab = {}
    for token in getattr(tok, "all_special_tokens", None) or []:
        if token not in vocab:
            vocab[token] = tok.convert_tokens_to_ids(token)
    return vocab


def _token_id(tok: Any, vocab: dict[str, int], token: str | None) -> int | None:
    """The id of a (language) token, or None when the tokenizer does not know it.

    Some tokenizers (M2M100) keep language tokens outside get_vocab(), so ask the tokenizer too.
    """
    if not token:
        return None
    if token in vocab:
        return int(vocab[token])
    try:
        found = tok.convert_tokens_to_ids(token)
    except (KeyError, ValueError, TypeError, AttributeError):
        return None
    if not isinstance(found, int) or (
        found == getattr(tok, "unk_token_id", None) and token != getattr(tok, "unk_token", None)
    ):
        return None
    return found


def model_card(lm: LoadedModel) -> dict:
    """The gptcli-model.json beside a model (bundled models have one), or {}."""
    path = lm.path / CARD
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def detect_kind(lm: LoadedModel) -> str:
    config = lm.model.config
    model_type = getattr(config, "model_type", "") or ""
    if not lm.is_encoder_decoder:
        return "chat" if lm.has_chat_template else "plain"
    vocab = _vocab(lm.tokenizer)
    if model_type == "marian":
        return "marian"
    if model_type in T5_TYPES:
        return "t5"
    if model_type in ("m2m_100", "nllb-moe"):
        return "nllb" if _token_id(lm.tokenizer, vocab, "eng_Latn") is not None else "m2m100"
    if model_type == "mbart" and _token_id(lm.tokenizer, vocab, "en_XX") is not None:
        return "mbart"
    if model_type == "fsmt":
        return "fsmt"
    return "seq2seq"


def _pair_text(source: Language | None, target: Language) -> str:
    return f"{source.name} to {target.name}" if source else f"into {target.name}"


def _cannot(lm: LoadedModel, what: str, requested: str, hint: str | None = None) -> UsageError:
    return UsageError(
        f"model '{lm.name}' {what}; it cannot translate {requested}.",
        hint=hint or "Pick a model for that pair with --model (e.g. a Marian opus-mt-SRC-TGT or an NLLB model).",
    )


def _need_source(lm: LoadedModel, kind: str, source: Language | None) -> Language:
    if source is None:
        raise UsageError(f"model '{lm.name}' ({kind}) needs --from: it cannot tell the source language.")
    return source


def make_plan(lm: LoadedModel, source: Language | None, target: Language) -> Plan:
    """Check that the model can translate source -> target and say how; a UsageError otherwise."""
    kind = detect_kind(lm)
    builder = {
        "marian": _marian,
        "t5": _t5,
        "m2m100": _m2m100,
        "nllb": _nllb,
        "mbart": _mbart,
        "fsmt": _fsmt,
    }.get(kind, _generic)
    plan = builder(lm, kind, source, target)
    if plan.source is not None and plan.source.code == plan.target.code:
        raise UsageError(f"--to is the same language as the source ({plan.target}); nothing to translate.")
    return plan


def remote_plan(source: Language | None, target: Language) -> Plan:
    """A model on an OpenAI-compatible server: asked through its chat endpoint (the server applies
    its chat template), with the instruction a local chat model gets."""
    if source is not None and source.code == target.code:
        raise UsageError(f"--to is the same language as the source ({target}); nothing to translate.")
    return Plan("chat", target, source)


def _check_declared(
    lm: LoadedModel,
    declared_src: Language | None,
    declared_tgt: Language | None,
    source: Language | None,
    target: Language,
) -> Language | None:
    requested = _pair_text(source, target)
    if declared_tgt is not None and declared_tgt != target:
        what = f"translates {_pair_text(declared_src, declared_tgt)}"
        raise _cannot(lm, what, requested)
    if declared_src is not None and source is not None and declared_src != source:
        raise _cannot(lm, f"translates {_pair_text(declared_src, declared_tgt or target)}", requested)
    return source or declared_src


_OPUS_NAME = re.compile(r"opus-mt-([a-z]{2,3})-([a-z]{2,3})(?:$|[^a-z])", re.IGNORECASE)


def _marian(lm: LoadedModel, kind: str, source: Language | None, target: Language) -> Plan:
    tok = lm.tokenizer
    vocab = _vocab(tok)
    tokens = sorted(t for t in vocab if t.startswith(">>") and t.endswith("<<"))
    if tokens:
        # Multilingual target side: the source text starts with a >>lang<< token.
        wanted = [f">>{target.iso3}<<", f">>{target.code}<<"]
        wanted += [t for t in tokens if t.startswith(f">>{target.iso3}_")]
        chosen = next((t for t in wanted if _token_id(tok, vocab, t) is not None), None)
        if chosen is None:
            langs = ", ".join(t[2:-2] for t in tokens[:12]) + (" …" if len(tokens) > 12 else "")
            raise _cannot(lm, f"writes only {langs}", f"into {target.name}")
        return Plan(kind, target, source, prefix=chosen + " ")
    src = getattr(tok, "source_lang", None) or (getattr(tok, "init_kwargs", {}) or {}).get("source_lang")
    tgt = getattr(tok, "target_lang", None) or (getattr(tok, "init_kwargs", {}) or {}).get("target_lang")
    if not (src and tgt):
        # Old folders don't record their languages; Helsinki-NLP names do.
        match = _OPUS_NAME.search(f"{lm.name} {lm.path.name}")
        if match:
            src, tgt = match.groups()
    declared_src = find(src) if src else None
    declared_tgt = find(tgt) if tgt else None
    source = _check_declared(lm, declared_src, declared_tgt, source, target)
    return Plan(kind, target, source)


def _t5(lm: LoadedModel, kind: str, source: Language | None, target: Language) -> Plan:
    params = getattr(lm.model.config, "task_specific_params", None) or {}
    pairs = {}
    for key, value in params.items():
        match = re.fullmatch(r"translation_(\w+)_to_(\w+)", key)
        if match and isinstance(value, dict):
            a, b = find(match.group(1)), find(match.group(2))
            if a and b:
                pairs[(a.code, b.code)] = (a, value.get("prefix") or f"translate {a.name} to {b.name}: ")
    if pairs:
        choices = [(a, b) for (a, b) in pairs if b == target.code and (source is None or a == source.code)]
        if not choices:
            known = ", ".join(f"{a}→{b}" for a, b in pairs)
            raise _cannot(lm, f"was trained for {known}", _pair_text(source, target))
        src_lang, prefix = pairs[choices[0]]
        return Plan(kind, target, src_lang, prefix=prefix)
    source = _need_source(lm, "T5", source)
    return Plan(kind, target, source, prefix=f"translate {source.name} to {target.name}: ")


def _language_token_plan(
    lm: LoadedModel, kind: str, source: Language | None, target: Language, code_of: Callable[[Language], str | None]
) -> Plan:
    tok = lm.tokenizer
    vocab = _vocab(tok)
    source = _need_source(lm, kind, source)
    tgt_token, src_token = code_of(target), code_of(source)
    ids = {}
    for lang, token in ((target, tgt_token), (source, src_token)):
        ids[lang.code] = _token_id(tok, vocab, token)
        if ids[lang.code] is None:
            raise _cannot(lm, f"has no language token for {lang.name}", _pair_text(source, target))
    assert src_token is not None  # a missing token has no id: raised above
    src_code = src_token.strip("_") if kind == "m2m100" else src_token
    return Plan(kind, target, source, src_lang_code=src_code, forced_bos_token_id=ids[target.code])


def _m2m100(lm: LoadedModel, kind: str, source: Language | None, target: Language) -> Plan:
    return _language_token_plan(lm, kind, source, target, lambda lang: f"__{lang.code}__")


def _nllb(lm: LoadedModel, kind: str, source: Language | None, target: Language) -> Plan:
    return _language_token_plan(lm, kind, source, target, lambda lang: lang.nllb)


def _mbart(lm: LoadedModel, kind: str, source: Language | None, target: Language) -> Plan:
    return _language_token_plan(lm, kind, source, target, lambda lang: lang.mbart)


def _fsmt(lm: LoadedModel, kind: str, source: Language | None, target: Language) -> Plan:
    langs = getattr(lm.model.config, "langs", None) or []
    declared = [find(x) for x in langs] if len(langs) == 2 else [None, None]
    source = _check_declared(lm, declared[0], declared[1], source, target)
    return Plan(kind, target, source)


def _trained_source_tokens(card: dict) -> int | None:
    longest = card.get("longest_training_source")
    tokens = longest.get("tokens") if isinstance(longest, dict) else None
    return tokens if isinstance(tokens, int) and tokens > 0 else None


def _generic(lm: LoadedModel, kind: str, source: Language | None, target: Language) -> Plan:
    full_card = model_card(lm)
    card = full_card.get("translation") or {}
    declared_src = find(card["from"]) if card.get("from") else None
    declared_tgt = find(card["to"]) if card.get("to") else None
    source = _check_declared(lm, declared_src, declared_tgt, source, target)
    if kind == "plain" and source is None:
        raise UsageError(
            f"model '{lm.name}' is a plain language model; pass --from so the prompt can name the source language.",
        )
    plan = Plan(kind, target, source, trained_source_tokens=_trained_source_tokens(full_card))
    if kind == "seq2seq":
        plan.notes.append(f"model '{lm.name}' does not say which languages it translates; its output is used as is.")
    return plan


def apply_plan(lm: LoadedModel, plan: Plan) -> None:
    """Set the tokenizer's source language and the decoder's first token for language-token models."""
    if plan.src_lang_code is not None:
        lm.tokenizer.src_lang = plan.src_lang_code
    if plan.forced_bos_token_id is not None:
        lm.model.generation_config.forced_bos_token_id = plan.forced_bos_token_id
