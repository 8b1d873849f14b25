"""Prompts for translating with causal (decoder-only) language models.

A model with a chat template gets an instruction as a user turn; any other
model gets the plain pattern the bundled model was trained on:

    English: I like tea.
    French:

and generation stops at the end of that line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gptcli.translation.families import Plan

if TYPE_CHECKING:
    from gptcli.loading import LoadedModel


def instruction(text: str, plan: Plan) -> str:
    source = f"{plan.source.name} " if plan.source else ""
    return (
        f"Translate the following {source}text into {plan.target.name}. "
        f"Reply with the translation only, on one line.\n\n{text}"
    )


def plain_prompt(text: str, plan: Plan) -> str:
    assert plan.source is not None  # the plain format is chosen only when the source language is known
    return f"{plan.source.name}: {text}\n{plan.target.name}:"


def prompt_ids(lm: LoadedModel, plan: Plan, text: str) -> list[int]:
    tok = lm.tokenizer
    if plan.kind == "chat":
        messages = [{"role": "user", "content": instruction(text, plan)}]
        out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if hasattr(out, "keys") else out
        return list(ids[0] if ids and isinstance(ids[0], list) else ids)
    ids = list(tok(plain_prompt(text, plan))["input_ids"])
    start = tok.bos_token_id
    if start is not None and (not ids or ids[0] != start):
        # A fresh document starts after the separator token, as in training
        # (GPT-2-style tokenizers don't add it themselves).
        ids.insert(0, start)
    return ids


def stop_strings(plan: Plan) -> tuple[str, ...]:
    # The plain pattern puts one translation on one line; a chat reply ends with
    # its end-of-turn token, and any line breaks in it are joined afterwards.
    return ("\n",) if plan.kind == "plain" else ()
