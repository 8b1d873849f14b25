"""Loading text documents from files, folders or stdin for train, finetune and eval.

Text files are read directly (strict UTF-8 with byte offsets in errors); a text
file holding `<|endoftext|>` separator lines (the TinyStories convention) is
split into documents there. JSON Lines are parsed line by line so a bad line is
reported by number. CSV, Parquet and JSON arrays go through Hugging Face
`datasets`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gptcli.errors import InputError, UsageError
from gptcli.inputs import parse_jsonl, read_stdin, read_text_file

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TABLE_SUFFIXES = (".csv", ".parquet", ".json", ".tsv")
SUPPORTED = TEXT_SUFFIXES + JSONL_SUFFIXES + TABLE_SUFFIXES
DOC_SEPARATOR = "<|endoftext|>"


@dataclass
class Document:
    id: str  # "file.txt", "file.jsonl:3" (line number) or the record's "id" field
    text: str
    source: str


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders expand to their supported files, sorted."""
    out: list[Path] = []
    for raw in paths:
        if str(raw) == "-":
            out.append(Path("-"))
            continue
        p = Path(raw).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED)
            if not found:
                raise UsageError(f"folder '{p}' has no data files ({', '.join(SUPPORTED)}).")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise UsageError(f"data file '{p}' does not exist.")
    return out


def split_text(text: str, source: str) -> list[Document]:
    if DOC_SEPARATOR in text:
        parts = [t.strip("\n") for t in text.split(DOC_SEPARATOR)]
        return [Document(f"{source}#{i + 1}", t, source) for i, t in enumerate(parts) if t.strip()]
    return [Document(source, text, source)] if text.strip() else []


def load_documents(
    paths: Iterable[str | Path], text_field: str = "text", max_docs: int | None = None
) -> list[Document]:
    """All documents from the given files/folders ('-' is stdin), in order."""
    docs: list[Document] = []
    for path in expand_paths(paths):
        docs.extend(_load_file(path, text_field))
        if max_docs is not None and len(docs) >= max_docs:
            return docs[:max_docs]
    return docs


def _load_file(path: Path, text_field: str) -> list[Document]:
    source = "stdin" if str(path) == "-" else str(path)
    suffix = path.suffix.lower()
    if str(path) == "-":
        return split_text(read_stdin(), source)
    if suffix in JSONL_SUFFIXES:
        docs = []
        for rec in parse_jsonl(read_text_file(path), source):
            line = rec.pop("__line__")
            if text_field not in rec:
                raise InputError(
                    f'{source} line {line} has no field "{text_field}".',
                    hint=f"Pass --text-field with one of: {', '.join(map(str, rec)) or 'none'}.",
                )
            value = rec[text_field]
            if not isinstance(value, str):
                raise InputError(f'{source} line {line}: field "{text_field}" is not a string.')
            docs.append(Document(str(rec.get("id", f"{source}:{line}")), value, source))
        return docs
    if suffix in TABLE_SUFFIXES:
        return _load_table(path, text_field)
    return split_text(read_text_file(path), source)


def _load_table(path: Path, text_field: str) -> list[Document]:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    kind = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".json": "json"}[path.suffix.lower()]
    extra = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    if kind in ("csv", "json"):
        read_text_file(path)  # strict UTF-8 check with a byte offset before datasets sees it
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train", **extra)
    except Exception as exc:
        raise InputError(
            f"cannot read {path}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
        ) from exc
    if text_field not in ds.column_names:
        raise InputError(
            f'{path} has no column "{text_field}".',
            hint=f"Pass --text-field with one of: {', '.join(ds.column_names)}.",
        )
    ids = ds["id"] if "id" in ds.column_names else None
    docs = []
    for i, value in enumerate(ds[text_field]):
        if value is None:
            continue
        doc_id = str(ids[i]) if ids is not None else f"{path}:{i + 1}"
        docs.append(Document(doc_id, str(value), str(path)))
    return docs
