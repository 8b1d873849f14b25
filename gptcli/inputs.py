"""Reading user input: prompt arguments, stdin, text files and JSON Lines.

Every reader decodes strictly as UTF-8 and reports the byte offset of the first
bad byte, so a user can find it with `head -c`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptcli.errors import InputError, UsageError
from gptcli.fileio import split_lines


def decode_utf8(data: bytes, source: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{source} is not valid UTF-8 (bad byte at offset {exc.start}).",
            hint="Convert it, e.g. with `iconv -t UTF-8`.",
        ) from exc
    return text[1:] if text.startswith("\ufeff") else text  # drop a byte-order mark


def stdin_is_tty() -> bool:
    try:
        return sys.stdin is None or sys.stdin.isatty()
    except (AttributeError, ValueError):
        return True


def read_stdin() -> str:
    stream = getattr(sys.stdin, "buffer", None)
    data = stream.read() if stream is not None else sys.stdin.read().encode("utf-8")
    return decode_utf8(data, "stdin")


def read_text_file(path: Path | str) -> str:
    if str(path) == "-":
        return read_stdin()
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise UsageError(f"file '{path}' does not exist.") from exc
    except IsADirectoryError as exc:
        raise UsageError(f"'{path}' is a folder, not a file.") from exc
    except OSError as exc:
        raise InputError(f"cannot read '{path}': {exc.strerror}.") from exc
    return decode_utf8(data, str(path))


def gather_prompt(argument: str | None) -> str:
    """The prompt from the argument and/or stdin.

    - argument `-` or no argument with piped stdin: stdin is the prompt, less one final
      newline: `echo "The little dog" | gptcli generate` continues the sentence, as the
      same prompt given as an argument does. To end the prompt with a newline, end the
      input with two (`printf 'Title\\n\\n'`);
    - argument and piped stdin: stdin first, then a newline, then the argument
      (like `llm`: `cat notes.txt | gptcli generate "Summary:"`);
    - no argument and stdin a terminal, or both empty: a usage error.
    """
    piped = not stdin_is_tty()
    if argument == "-":
        if not piped:
            raise UsageError(
                "prompt '-' means stdin, but stdin is a terminal.",
                hint="Pipe text in, or give the prompt as an argument.",
            )
        text = read_stdin()
        if not text.strip():
            raise UsageError(
                "stdin is empty: there is no prompt.", hint="Pipe some text in, or give the prompt as an argument."
            )
        return _drop_final_newline(text)
    stdin_text = read_stdin() if piped else ""
    if argument is None:
        if not piped:
            raise UsageError(
                "no prompt given.", hint='Pass one, e.g. gptcli generate "Once upon a time", or pipe text in.'
            )
        if not stdin_text.strip():
            raise UsageError(
                "stdin is empty: there is no prompt.", hint="Pipe some text in, or give the prompt as an argument."
            )
        return _drop_final_newline(stdin_text)
    if stdin_text.strip():
        return stdin_text.rstrip("\n") + "\n" + argument
    return argument


def _drop_final_newline(text: str) -> str:
    # echo, a heredoc and most editors end text with one newline that is not part of the prompt.
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


@dataclass
class Record:
    """One input of a batch run: a prompt line or a JSONL object."""

    prompt: str
    id: Any = None
    overrides: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] | None = None
    line: int | None = None  # its line in the input file (1-based), so outputs can be matched to it


SAMPLING_KEYS = (
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repetition_penalty",
    "greedy",
    "num_return_sequences",
    "stop",
    "seed",
    "num_beams",
)


def looks_like_jsonl(path: Path | str, text: str) -> bool:
    if str(path).endswith((".jsonl", ".ndjson")):
        return True
    lines = [ln for ln in split_lines(text) if ln.strip()]
    return bool(lines) and all(ln.lstrip().startswith("{") for ln in lines)


class _TooManyDigits(Exception):
    pass


def _parse_int(text: str) -> int:
    # Python refuses to convert integers longer than sys.get_int_max_str_digits() (4,300 by
    # default, a guard against slow conversions) with a ValueError that json.loads lets escape
    # as a raw "Exceeds the limit (4300 digits)" message.
    limit = sys.get_int_max_str_digits()
    if limit and len(text.lstrip("-")) > limit:
        raise _TooManyDigits(len(text.lstrip("-")), limit)
    return int(text)


def parse_json_line(line: str, source: str, number: int) -> Any:
    """One JSON Lines record; errors name the source and line."""
    try:
        return json.loads(line, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source} line {number} is not valid JSON: {exc.msg}.") from exc
    except _TooManyDigits as exc:
        raise UsageError(
            f"{source} line {number} has a number of {exc.args[0]} digits; the limit is {exc.args[1]}."
        ) from exc


def parse_jsonl(text: str, source: str) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        value = parse_json_line(line, source, number)
        if not isinstance(value, dict):
            raise InputError(f"{source} line {number} is not a JSON object.")
        records.append({"__line__": number, **value})
    return records


def read_prompt_file(path: Path | str, text_field: str = "prompt") -> tuple[list[Record], bool]:
    """Prompts from a file: one per line, or JSONL records. Returns (records, is_jsonl)."""
    source = "stdin" if str(path) == "-" else str(path)
    text = read_text_file(path)
    if looks_like_jsonl(path, text):
        records = []
        for obj in parse_jsonl(text, source):
            line = obj.pop("__line__")
            if text_field not in obj or not isinstance(obj[text_field], str):
                raise InputError(f'{source} line {line} has no "{text_field}" string.')
            overrides = {k: obj[k] for k in SAMPLING_KEYS if k in obj and obj[k] is not None}
            records.append(Record(obj[text_field], obj.get("id"), overrides, obj, line))
        jsonl = True
    else:
        records = [Record(line, line=n) for n, line in enumerate(split_lines(text), start=1) if line.strip()]
        jsonl = False
    if not records:
        raise UsageError(f"{source} has no prompts.")
    return records, jsonl
