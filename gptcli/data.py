"""Loading text documents from files, folders or stdin for train, finetune and eval.

Text files are read directly (strict UTF-8 with byte offsets in errors); a text
file holding `<|endoftext|>` separator lines (the TinyStories convention) is
split into documents there. JSON Lines are parsed line by line so a bad line is
reported by number. CSV, Parquet and JSON arrays go through Hugging Face
`datasets`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
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

    def has_text(self) -> bool:
        """Whether the text is not blank."""
        return bool(self.text.strip())

    def utf8_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


class WholeFile(Document):
    """A text file without `<|endoftext|>` separators: one (non-blank) document whose text is read
    from the file only when asked for, so holding the document costs nothing: eval with the token
    cache needs only its byte count. Each access of `text` reads the file again."""

    def __init__(self, path: Path, bom: bool):
        self.id = self.source = str(path)
        self.path = path
        self.bom = bom  # the file starts with a UTF-8 byte-order mark, which is not part of the text

    @property
    def text(self) -> str:  # type: ignore[override]
        return read_text_file(self.path)

    def has_text(self) -> bool:
        return True  # blank files yield no document

    def utf8_bytes(self) -> int:
        return self.path.stat().st_size - (3 if self.bom else 0)

    def __repr__(self) -> str:
        return f"WholeFile({str(self.path)!r})"


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


def iter_documents(paths: Iterable[str | Path], text_field: str = "text", lazy: bool = False) -> Iterator[Document]:
    """The documents of load_documents, one file at a time; a text file with `<|endoftext|>`
    separators is read in pieces, so taking the first few documents of a huge file reads only them.
    `lazy`: a text file without separators is a WholeFile (its text read only when asked for)."""
    for path in expand_paths(paths):
        text_file = str(path) != "-" and path.suffix.lower() not in JSONL_SUFFIXES + TABLE_SUFFIXES
        if text_file and file_contains(path, DOC_SEPARATOR.encode()):
            yield from iter_separated(path)
        elif text_file and lazy:
            doc = whole_file(path)
            if doc is not None:
                yield doc
        else:
            yield from _load_file(path, text_field)


def whole_file(path: Path) -> WholeFile | None:
    """The WholeFile document of a text file without separators, or None when its text is blank
    (read up to its first non-blank chunk to find out)."""
    bom = None
    for text in read_chunks(path):
        if bom is None:
            bom = text.startswith("\ufeff")
            text = text[1:] if bom else text
        if text.strip():
            return WholeFile(path, bom)
    return None


class DocumentStream:
    """The documents of files, read lazily each time it is iterated (once per model in eval): a
    consumer that stops early (--max-tokens) reads only what it used; a text file without separators is
    a WholeFile, read only when its text is asked for. Not for stdin (read once)."""

    def __init__(self, paths: Iterable[str | Path], text_field: str = "text", max_docs: int | None = None):
        self.paths, self.text_field, self.max_docs = list(paths), text_field, max_docs
        expand_paths(self.paths)  # a missing file is a usage error now, before any model loads

    def __iter__(self) -> Iterator[Document]:
        from itertools import islice

        return islice(iter_documents(self.paths, self.text_field, lazy=True), self.max_docs)


def iter_separated(path: Path, on_bytes: Callable[[int], None] | None = None) -> Iterator[Document]:
    """split_text's documents of a text file holding separators, read READ_BYTES at a time."""
    source = str(path)
    number, parts, first = 0, [], True
    for text in read_chunks(path, on_bytes):
        if first:
            text, first = (text[1:] if text.startswith("\ufeff") else text), False
        pieces = text.split(DOC_SEPARATOR)  # the separator holds no newline: never split between chunks
        for i, piece in enumerate(pieces):
            parts.append(piece)
            if i < len(pieces) - 1:
                number += 1
                doc = "".join(parts).strip("\n")
                parts = []
                if doc.strip():
                    yield Document(f"{source}#{number}", doc, source)
    doc = "".join(parts).strip("\n")
    if doc.strip():
        yield Document(f"{source}#{number + 1}", doc, source)


READ_BYTES = 8 << 20  # bytes read from a text file at a time


def read_chunks(path: Path, on_bytes: Callable[[int], None] | None = None) -> Iterator[str]:
    """The text of a file in chunks of about READ_BYTES, each ending after a newline (or at the end),
    so a UTF-8 character never spans two; strict UTF-8 with the file's byte offset in errors."""
    offset = 0
    carry = b""
    with open(path, "rb") as f:
        while True:
            data = f.read(READ_BYTES)
            if not data:
                break
            if on_bytes is not None:
                on_bytes(len(data))
            data = carry + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data
                continue
            yield decode_at(data[:cut], str(path), offset)
            offset += cut
            carry = data[cut:]
    if carry:
        yield decode_at(carry, str(path), offset)


def decode_at(data: bytes, source: str, offset: int) -> str:
    """Strict UTF-8 of bytes found at `offset` of `source` (the offset goes into the error)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{source} is not valid UTF-8 (bad byte at offset {offset + exc.start}).",
            hint="Convert it, e.g. with `iconv -t UTF-8`.",
        ) from exc


def file_contains(path: Path, needle: bytes) -> bool:
    """Whether the file's bytes hold `needle`: one memory-mapped scan, nothing loaded."""
    import mmap

    if path.stat().st_size == 0:
        return False
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return mm.find(needle) != -1


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
    docs = []
    for i, doc_id, value in iter_table(path, text_field):
        docs.append(Document(doc_id if doc_id is not None else f"{path}:{i + 1}", value, str(path)))
    return docs


def iter_table(path: Path, text_field: str, batch_size: int = 1000) -> Iterable[tuple[int, str | None, str]]:
    """(row number, the row's "id" or None, text) of each row with a text, a batch of rows at a time:
    the Arrow table `datasets` builds is memory-mapped, so memory stays flat whatever its size."""
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
    columns = list(dict.fromkeys([text_field, "id"] if "id" in ds.column_names else [text_field]))
    row = 0
    for batch in ds.select_columns(columns).iter(batch_size=batch_size):
        ids = batch.get("id")
        for j, value in enumerate(batch[text_field]):
            if value is not None:
                yield row + j, (str(ids[j]) if ids is not None else None), str(value)
        row += len(batch[text_field])
