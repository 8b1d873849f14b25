"""Finetuning data: plain text, prompt/completion JSONL, chat JSONL, as token ids with loss masks.

For prompt/completion and chat data only the completion / assistant tokens
are targets (mask True); prompts, system and user turns are context only.
Chat records are rendered with the tokenizer's own chat template.
"""

from __future__ import annotations

from typing import Any

from gptcli.errors import InputError, UsageError


def detect_format(paths: list[str], requested: str) -> str:
    """auto: the first JSONL record decides (messages -> chat, prompt+completion -> completion)."""
    if requested != "auto":
        return requested
    from gptcli.data import JSONL_SUFFIXES, expand_paths
    from gptcli.inputs import parse_jsonl, read_text_file

    files = expand_paths(paths)
    first = files[0] if files else None
    if first is None or first.suffix.lower() not in JSONL_SUFFIXES:
        return "text"
    records = parse_jsonl(read_text_file(first), str(first))
    if not records:
        return "text"
    rec = records[0]
    if "messages" in rec:
        return "chat"
    if "prompt" in rec and "completion" in rec:
        return "completion"
    return "text"


def load_records(paths: list[str]) -> list[dict[str, Any]]:
    from gptcli.data import JSONL_SUFFIXES, expand_paths
    from gptcli.inputs import parse_jsonl, read_text_file

    records = []
    for path in expand_paths(paths):
        if str(path) != "-" and path.suffix.lower() not in JSONL_SUFFIXES:
            raise UsageError(f"{path}: prompt/completion and chat data must be JSON Lines (.jsonl).")
        source = "stdin" if str(path) == "-" else str(path)
        for rec in parse_jsonl(read_text_file(path), source):
            rec["__source__"] = source
            records.append(rec)
    if not records:
        raise InputError(f"the training data ({', '.join(map(str, paths))}) holds no records.")
    return records


def _where(rec: dict[str, Any]) -> str:
    return f"{rec.get('__source__', 'data')} line {rec.get('__line__', '?')}"


def _encode(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []


def completion_examples(tok: Any, records: list[dict[str, Any]]) -> tuple[list[list[int]], list[list[bool]]]:
    ids, masks = [], []
    for rec in records:
        for key in ("prompt", "completion"):
            if not isinstance(rec.get(key), str):
                raise InputError(
                    f'{_where(rec)} needs a string "{key}" field.',
                    hint='Each line: {"prompt": "...", "completion": "..."}',
                )
        p, c = _encode(tok, rec["prompt"]), _encode(tok, rec["completion"])
        ids.append(p + c)
        masks.append([False] * len(p) + [True] * len(c))
    return ids, masks


def chat_examples(tok: Any, records: list[dict[str, Any]]) -> tuple[list[list[int]], list[list[bool]]]:
    if not getattr(tok, "chat_template", None):
        raise InputError(
            "this model's tokenizer has no chat template, so chat data cannot be formatted.",
            hint="Use prompt/completion JSONL (--format completion) or a model with a chat template.",
        )
    ids, masks = [], []
    for rec in records:
        messages = rec.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages
            )
        ):
            raise InputError(f'{_where(rec)}: "messages" must be a non-empty list of {{"role", "content"}} strings.')
        if not any(m["role"] == "assistant" for m in messages):
            raise InputError(f"{_where(rec)} has no assistant message to learn from.")
        seq, mask = _render_chat(tok, [{"role": m["role"], "content": m["content"]} for m in messages], _where(rec))
        ids.append(seq)
        masks.append(mask)
    return ids, masks


def _render_chat(tok: Any, messages: list[dict[str, str]], where: str) -> tuple[list[int], list[bool]]:
    """Render turn by turn; each assistant reply (after its header) is a target, the rest context."""

    def render(msgs, gen_prompt=False) -> str:
        try:
            return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen_prompt)
        except Exception as exc:  # jinja errors (e.g. roles the template rejects)
            raise InputError(f"{where}: the chat template cannot format this conversation ({exc}).") from exc

    seq: list[int] = []
    mask: list[bool] = []
    done = ""
    for i, msg in enumerate(messages):
        if msg["role"] == "assistant":
            header = render(messages[:i], gen_prompt=True)
            full = render(messages[: i + 1])
            if not header.startswith(done) or not full.startswith(header):
                raise InputError(
                    f"{where}: the chat template does not render turns as prefixes; cannot mask the prompt."
                )
            context, reply = header[len(done) :], full[len(header) :]
        else:
            full = render(messages[: i + 1])
            if not full.startswith(done):
                raise InputError(
                    f"{where}: the chat template does not render turns as prefixes; cannot mask the prompt."
                )
            context, reply = full[len(done) :], ""
        c, r = _encode(tok, context), _encode(tok, reply)
        seq += c + r
        mask += [False] * len(c) + [True] * len(r)
        done = full
    return seq, mask


def text_examples(tok: Any, paths: list[str], text_field: str) -> list[list[int]]:
    from gptcli.training.runner import load_texts
    from gptcli.training.tokenizer import encode_documents

    return encode_documents(tok, load_texts(paths, text_field))


def build(tok: Any, paths: list[str], fmt: str, text_field: str) -> tuple[list[list[int]], list[list[bool]] | None]:
    if fmt == "text":
        return text_examples(tok, paths, text_field), None
    records = load_records(paths)
    return completion_examples(tok, records) if fmt == "completion" else chat_examples(tok, records)
