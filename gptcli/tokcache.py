"""The token cache: a corpus tokenized once into flat binary files, read back through numpy.memmap.

Layout of one cache entry (a folder), the nanoGPT `train.bin` / Megatron `.bin` + `.idx` shape:

    tokens.bin     every document's tokens followed by the end-of-text id, back to back
                   (uint16 when the vocabulary fits, else uint32): exactly the stream
                   `packing.stream` builds in memory
    docs.bin       uint64 end offset (exclusive, after the eot) of each document in tokens.bin
    manifest.json  written last: format, tokenizer fingerprint, eot id, dtype, token and
                   document counts, and each source file's path, size, mtime and a hash

An entry is used only when its manifest exists, matches the tokenizer and the sources as they
are now, and the two binary files have exactly the sizes it records; anything else (a source
changed, another tokenizer, a truncated file, a build killed half-way) is rebuilt, with a note.
A build happens in a temporary sibling folder under an exclusive lock (fcntl.flock on a lock
file) and is renamed into place complete: a second builder of the same entry (another run,
another rank of a torchrun job) waits for the lock, then finds the entry valid and reuses it,
and a build killed by Ctrl-C or SIGKILL leaves only a temporary folder that is never read and
is removed by the next build.

Tokenization streams: text files are read in pieces cut after a newline byte, JSON Lines line
by line, and the pieces of text are encoded in batches with the tokenizers library's
`encode_batch` (all cores). Pieces are cut only where cutting provably cannot change the
tokens (see `cut_mode`), so the stream equals whole-document tokenization.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptcli.errors import GptcliError, InputError
from gptcli.fileio import write_atomic

FORMAT = "gptcli-token-cache/1"
MANIFEST = "manifest.json"
TOKENS = "tokens.bin"
DOCS = "docs.bin"
PIECE_CHARS = 16 << 10  # target size of the text pieces handed to encode_batch
BATCH_CHARS = 4 << 20  # text encoded per encode_batch call
HASH_WHOLE = 32 << 20  # files up to this size are hashed whole; larger ones by their first and last MiB
DEFAULT_SAMPLE_MB = 200  # default bound of the text a BPE tokenizer is trained on

Progress = Callable[[int, int, int], None]  # (bytes done, bytes total, tokens written)


def default_root() -> Path:
    """$GPTCLI_CACHE_DIR, else $XDG_CACHE_HOME/gptcli/tokens (~/.cache/gptcli/tokens)."""
    env = os.environ.get("GPTCLI_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "gptcli" / "tokens"


# ---------------------------------------------------------------- fingerprints


def tokenizer_fingerprint(tok: Any) -> str:
    """SHA-256 of the tokenizer's full definition (vocabulary, merges, pre-tokenizer, normalizer) and eot id."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        for key in ("truncation", "padding"):  # call-time settings transformers changes; never the tokens
            spec.pop(key, None)
        body = json.dumps(spec, sort_keys=True)
    else:  # a slow (Python) tokenizer: its class and vocabulary
        body = type(tok).__name__ + json.dumps(sorted(tok.get_vocab().items()))
    return hashlib.sha256(f"{body}\0eot={tok.eos_token_id}".encode()).hexdigest()


def source_print(path: Path) -> dict[str, Any]:
    """Path, size, mtime and a hash: the whole file when small, else its first and last MiB.

    Size and mtime alone miss a same-size rewrite within the file system's time granularity
    (tests do that); hashing a large file whole would cost seconds on every cache hit."""
    st = path.stat()
    if st.st_size <= HASH_WHOLE:
        digest = file_sha256(path)
    else:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            h.update(f.read(1 << 20))
            f.seek(max(st.st_size - (1 << 20), 0))
            h.update(f.read(1 << 20))
        digest = h.hexdigest()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dataset_key(paths: list[Path], text_field: str) -> str:
    """The folder name of one corpus (these files, in this order, this text field) under the cache root."""
    ident = json.dumps([[str(p.resolve()) for p in paths], text_field])
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- where to cut


def cut_mode(tok: Any) -> str | None:
    """Where text can be cut without changing its tokens.

    "any": anywhere (the char tokenizer: one pre-token per character; the bytes tokenizer:
    a byte-level BPE without merges). "line": just before a line break ("\\n" or "\\r\\n") that
    follows a non-space character (byte-level BPE with GPT-2's pre-tokenizer regex, no normalizer:
    no pattern of that regex joins a non-space character and the whitespace after it, and the
    whitespace run then matches the same with or without the text before it. A cut *after* a
    newline is not safe: " \\n" at the end of a string is one pre-token where the whole text has
    two when more text follows).
    None: nowhere inside a document (any other tokenizer: each document is encoded whole)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    if spec.get("normalizer") is not None:
        return None
    if pre.get("type") == "Split" and pre.get("pattern") == {"Regex": "[\\s\\S]"} and pre.get("behavior") == "Isolated":
        return "any"
    if pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space"):
        if not pre.get("use_regex", True):
            return "any" if model.get("type") == "BPE" and not model.get("merges") else None
        return "line"
    return None


def cut_pieces(buffer: str, mode: str | None, final: bool, target: int = PIECE_CHARS) -> tuple[list[str], str]:
    """`buffer` cut into pieces of about `target` characters at safe places; returns (pieces, rest).
    The rest (no safe cut yet) waits for more text unless `final`."""
    pieces: list[str] = []
    start = 0
    if mode == "any":
        while len(buffer) - start > target:
            pieces.append(buffer[start : start + target])
            start += target
    elif mode == "line":
        i = buffer.find("\n", start + target)
        while i != -1:
            j = i - 1 if buffer[i - 1] == "\r" else i  # cut before the line break ("\n" or "\r\n")
            if j > start and not buffer[j - 1].isspace():
                pieces.append(buffer[start:j])
                start = j
                i = buffer.find("\n", start + target)
            else:
                i = buffer.find("\n", i + 1)
    rest = buffer[start:]
    if final:
        if rest:
            pieces.append(rest)
        rest = ""
    return pieces, rest


# ---------------------------------------------------------------- reading documents as pieces

# A document is a run of (text, False) pieces ended by one ("", True) marker; pieces are
# cut where read (after a newline byte), not yet at tokenization-safe places.


def _text_file_docs(path: Path, on_bytes: Callable[[int], None]) -> Iterator[tuple[str, bool]]:
    """The documents of a text file, as gptcli.data.split_text makes them: split at `<|endoftext|>`
    when the file holds one (one fast scan of its bytes finds out), else the whole file as one
    document (unless blank), streamed in chunks."""
    from gptcli.data import DOC_SEPARATOR, file_contains, iter_separated, read_chunks

    if file_contains(path, DOC_SEPARATOR.encode()):
        for doc in iter_separated(path, on_bytes):
            yield doc.text, False
            yield "", True
        return
    first = True
    held: list[str] | None = []  # leading blank text, held back until something else shows the document is not blank
    for text in read_chunks(path, on_bytes):
        if first:
            text, first = (text[1:] if text.startswith("\ufeff") else text), False
        if held is not None:
            held.append(text)
            if text.strip():
                yield "".join(held), False
                held = None
        else:
            yield text, False
    if held is None:
        yield "", True


def _jsonl_docs(path: Path, text_field: str, on_bytes: Callable[[int], None]) -> Iterator[tuple[str, bool]]:
    """One document per JSON Lines record (its text field), line by line, errors as gptcli.data gives them."""
    from gptcli.data import decode_at
    from gptcli.inputs import parse_json_line

    source = str(path)
    offset = 0
    number = 0
    with open(path, "rb") as f:
        for raw in f:
            on_bytes(len(raw))
            line_offset, offset = offset, offset + len(raw)
            # lines end at "\n" only (as split_lines cuts): a U+2028 inside a JSON string stays put
            number += 1
            line = decode_at(raw, source, line_offset)
            if number == 1 and line.startswith("\ufeff"):
                line = line[1:]
            line = line[:-1] if line.endswith("\n") else line
            line = line[:-1] if line.endswith("\r") else line
            if not line.strip():
                continue
            rec = parse_json_line(line, source, number)
            if not isinstance(rec, dict):
                raise InputError(f"{source} line {number} is not a JSON object.")
            if text_field not in rec:
                raise InputError(
                    f'{source} line {number} has no field "{text_field}".',
                    hint=f"Pass --text-field with one of: {', '.join(map(str, rec)) or 'none'}.",
                )
            value = rec[text_field]
            if not isinstance(value, str):
                raise InputError(f'{source} line {number}: field "{text_field}" is not a string.')
            if value.strip():
                yield value, False
                yield "", True


def source_docs(path: Path, text_field: str, on_bytes: Callable[[int], None]) -> Iterator[tuple[str, bool]]:
    from gptcli.data import JSONL_SUFFIXES, TABLE_SUFFIXES, iter_table, load_documents

    suffix = path.suffix.lower()
    if str(path) == "-":
        for d in load_documents([path], text_field=text_field):
            if d.text.strip():
                yield d.text, False
                yield "", True
        return
    if suffix in TABLE_SUFFIXES:  # CSV/Parquet/JSON through `datasets`, a batch of rows at a time
        for _, _, text in iter_table(path, text_field):
            if text.strip():
                yield text, False
                yield "", True
        on_bytes(path.stat().st_size)
        return
    if suffix in JSONL_SUFFIXES:
        yield from _jsonl_docs(path, text_field, on_bytes)
    else:
        yield from _text_file_docs(path, on_bytes)


def iter_documents(paths: list[Path], text_field: str) -> Iterator[str]:
    """Each document's whole text (for tokenizer training and tests); not for huge single documents."""
    for path in paths:
        parts: list[str] = []
        for text, end in source_docs(path, text_field, lambda n: None):
            if end:
                yield "".join(parts)
                parts = []
            else:
                parts.append(text)


# ---------------------------------------------------------------- encoding


def encode_stream(tok: Any, pieces: Iterator[tuple[str, bool]], write: Callable[[Any, list[int]], None]) -> None:
    """Tokenize documents given as pieces; call write(token array, [ends of documents within it]) per batch.

    Each document's tokens are followed by the eot id. Pieces are re-cut at safe places (cut_mode)
    and encoded a batch of about BATCH_CHARS at a time with encode_batch."""
    from itertools import chain

    import numpy as np

    eot = int(tok.eos_token_id)
    backend = getattr(tok, "backend_tokenizer", None)
    mode = cut_mode(tok)
    batch: list[str] = []
    ends: list[bool] = []  # whether the eot follows batch[i]
    size = 0

    def flush() -> None:
        nonlocal batch, ends, size
        if not batch:
            return
        if backend is not None:
            # encode_batch_fast (tokenizers >= 0.20) skips the character offsets nobody reads here
            encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
            encoded = [e.ids for e in encode(batch, add_special_tokens=False)]
        else:
            encoded = [tok.encode(t, add_special_tokens=False) for t in batch]
        seqs: list[list[int]] = []
        doc_ends: list[int] = []
        pos = 0
        for ids, end in zip(encoded, ends):
            seqs.append(ids)
            pos += len(ids)
            if end:
                seqs.append([eot])
                pos += 1
                doc_ends.append(pos)
        arr = np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=pos)  # C-speed, no Python loop per token
        write(arr, doc_ends)
        batch, ends, size = [], [], 0

    buffer = ""
    for text, end in pieces:
        buffer += text
        if not end and len(buffer) < PIECE_CHARS:
            continue
        cut, buffer = cut_pieces(buffer, mode, final=end)
        if end and not cut:
            cut = [""]
        for i, piece in enumerate(cut):
            batch.append(piece)
            ends.append(end and i == len(cut) - 1)
            size += len(piece)
        if size >= BATCH_CHARS:
            flush()
    flush()


# ---------------------------------------------------------------- the cache entry


@dataclass
class Entry:
    folder: Path
    manifest: dict[str, Any]

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["tokens"])

    @property
    def n_documents(self) -> int:
        return int(self.manifest["documents"])

    def tokens(self) -> Any:
        """The token stream as a read-only numpy.memmap (pages load on demand: memory stays flat)."""
        import numpy as np

        dtype = np.dtype(self.manifest["dtype"])
        if self.n_tokens == 0:
            return np.zeros(0, dtype=dtype)
        return np.memmap(self.folder / TOKENS, dtype=dtype, mode="r", shape=(self.n_tokens,))

    def content_hashes(self) -> dict[str, str]:
        """SHA-256 of each source file's whole content when the entry was built ({resolved path: hash}),
        valid now since the entry was checked against the files' size, mtime and hash."""
        return {s["path"]: s["content_sha256"] for s in self.manifest.get("sources", []) if "content_sha256" in s}

    def doc_ends(self) -> Any:
        import numpy as np

        if self.n_documents == 0:
            return np.zeros(0, dtype=np.uint64)
        return np.memmap(self.folder / DOCS, dtype=np.uint64, mode="r", shape=(self.n_documents,))


def _problem(folder: Path, tok_print: str, sources: list[dict[str, Any]]) -> tuple[str | None, dict[str, Any] | None]:
    """(why the entry cannot be used, None) or (None, its manifest)."""
    import numpy as np

    try:
        man = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "missing", None
    except (OSError, ValueError):
        return "its manifest is unreadable", None
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        return "it was written by another version", None
    if man.get("tokenizer") != tok_print:
        return "the tokenizer changed", None
    old = {s["path"]: s for s in man.get("sources", [])}
    if [s["path"] for s in man.get("sources", [])] != [s["path"] for s in sources]:
        return "the list of source files changed", None
    for s in sources:
        o = old[s["path"]]
        if (o.get("size"), o.get("mtime_ns"), o.get("sha256")) != (s["size"], s["mtime_ns"], s["sha256"]):
            return f"{s['path']} changed", None
    try:
        itemsize = np.dtype(man["dtype"]).itemsize
        want = {TOKENS: int(man["tokens"]) * itemsize, DOCS: int(man["documents"]) * 8}
    except (KeyError, TypeError, ValueError):
        return "its manifest is incomplete", None
    for name, size in want.items():
        try:
            have = (folder / name).stat().st_size
        except OSError:
            return f"{name} is missing", None
        if have != size:
            return f"{name} has {have:,} bytes instead of {size:,} (truncated or damaged)", None
    return None, man


def lookup(paths: list[Path], tok: Any, text_field: str, root: Path | None = None) -> Entry | None:
    """The valid entry of these files under this tokenizer if one exists; never builds (no lock:
    entries appear by an atomic rename, complete)."""
    if any(str(p) == "-" for p in paths) or getattr(tok, "eos_token_id", None) is None:
        return None
    root = (root or default_root()).expanduser()
    tok_print = tokenizer_fingerprint(tok)
    folder = root / dataset_key(paths, text_field) / ("tok-" + tok_print[:16])
    if not (folder / MANIFEST).exists():
        return None
    _, man = _problem(folder, tok_print, [source_print(p) for p in paths])
    return Entry(folder, man) if man is not None else None


def token_dtype(tok: Any) -> str:
    backend = getattr(tok, "backend_tokenizer", None)
    n = backend.get_vocab_size(with_added_tokens=True) if backend is not None else len(tok)
    n = max(n, len(tok), int(tok.eos_token_id) + 1)
    return "uint16" if n <= 1 << 16 else "uint32"


def ensure(
    paths: list[Path],
    tok: Any,
    text_field: str,
    *,
    root: Path | None = None,
    what: str = "data",
    note: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    reusable: bool = True,
) -> Entry:
    """The valid cache entry of these files under this tokenizer, built (or rebuilt) when needed."""
    from gptcli import console

    note = note or console.info
    root = (root or default_root()).expanduser()
    stdin = any(str(p) == "-" for p in paths)
    if stdin:
        reusable = False
    sources = [] if stdin else [source_print(p) for p in paths]
    tok_print = tokenizer_fingerprint(tok)
    folder = (
        root / ("stdin-" + str(os.getpid()) if stdin else dataset_key(paths, text_field)) / ("tok-" + tok_print[:16])
    )
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GptcliError(
            f"cannot create the token cache folder {folder.parent}: {exc.strerror}.",
            hint="Pass --cache DIR (a writable folder) or set GPTCLI_CACHE_DIR.",
        ) from exc
    with _locked(folder.with_name(folder.name + ".lock")):
        if reusable:
            why, man = _problem(folder, tok_print, sources)
            if man is not None:
                return Entry(folder, _with_content_hashes(folder, man))
            if why != "missing":
                note(f"token cache for the {what}: rebuilding it ({why}).")
        _remove_stale(folder)
        man = _build(folder, paths, tok, text_field, tok_print, sources, what, progress)
        return Entry(folder, man)


def _with_content_hashes(folder: Path, man: dict[str, Any]) -> dict[str, Any]:
    """An entry built before manifests recorded each source's whole-content hash gets them once
    (one read of the corpus), so later runs never read it for run.json again."""
    missing = [s for s in man.get("sources", []) if "content_sha256" not in s]
    if not missing:
        return man
    for s in missing:
        s["content_sha256"] = s["sha256"] if s["size"] <= HASH_WHOLE else file_sha256(Path(s["path"]))
    try:
        write_atomic(folder / MANIFEST, json.dumps(man, indent=1) + "\n")
    except OSError:
        pass  # a read-only shared cache: the hashes serve this run only
    return man


class _locked:
    """An exclusive flock on `path` for the with-block; the kernel drops it if the process dies."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> None:
        import fcntl

        try:
            self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            # a cache shared read-only (prepared by someone else): reading a valid entry needs no
            # lock, and a build would fail anyway with a clear "cannot write the token cache" error
            self.fd = None
            return
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: Any) -> None:
        import fcntl

        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def _remove_stale(folder: Path) -> None:
    """Temporary folders of builds that died (we hold the lock, so no build is running)."""
    for p in folder.parent.glob(folder.name + ".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def _build(
    folder: Path,
    paths: list[Path],
    tok: Any,
    text_field: str,
    tok_print: str,
    sources: list[dict[str, Any]],
    what: str,
    progress: Progress | None,
) -> dict[str, Any]:
    import numpy as np

    dtype = np.dtype(token_dtype(tok))
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    total = sum(s["size"] for s in sources)
    done = [0, 0, 0]  # bytes read, tokens, documents

    def on_bytes(n: int) -> None:
        done[0] += n

    def all_pieces() -> Iterator[tuple[str, bool]]:
        for p in paths:
            yield from source_docs(p, text_field, on_bytes)

    t0 = time.perf_counter()
    try:
        tmp.mkdir(parents=True)
        with open(tmp / TOKENS, "wb") as ft, open(tmp / DOCS, "wb") as fd:

            def write(arr: Any, doc_ends: list[int]) -> None:
                arr.astype(dtype).tofile(ft)
                if doc_ends:
                    (np.asarray(doc_ends, dtype=np.uint64) + np.uint64(done[1])).tofile(fd)
                done[1] += len(arr)
                done[2] += len(doc_ends)
                if progress is not None:
                    progress(done[0], total, done[1])

            encode_stream(tok, all_pieces(), write)
            for f in (ft, fd):
                f.flush()
                os.fsync(f.fileno())
        if done[2] == 0:
            raise InputError(f"the {what} ({', '.join(map(str, paths))}) holds no text.")
        for s in sources:  # run.json's provenance reads these on a cache hit instead of re-reading the corpus
            s["content_sha256"] = s["sha256"] if s["size"] <= HASH_WHOLE else file_sha256(Path(s["path"]))
        man = {
            "format": FORMAT,
            "tokenizer": tok_print,
            "eot": int(tok.eos_token_id),
            "dtype": dtype.name,
            "tokens": done[1],
            "documents": done[2],
            "text_field": text_field,
            "sources": sources,
            "seconds": round(time.perf_counter() - t0, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_atomic(tmp / MANIFEST, json.dumps(man, indent=1) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(tmp, folder)
        return man
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise GptcliError(
            f"cannot write the token cache in {folder.parent}: {exc.strerror or exc}.",
            hint="Free some space, or pass --cache DIR on another disk.",
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # Ctrl-C or a bad input: nothing half-written stays
        raise


def sample_texts(paths: list[Path], text_field: str, max_bytes: int) -> list[str]:
    """The documents in order until about `max_bytes` of text (deterministic): what a BPE tokenizer trains on."""
    out: list[str] = []
    size = 0
    for text in iter_documents(paths, text_field):
        out.append(text)
        size += len(text)
        if size >= max_bytes:
            break
    return out


def stderr_progress(label: str) -> Progress:
    """A progress line on stderr (bytes, tokens/s, ETA), redrawn in place at most 4 times a second."""
    t0 = time.perf_counter()
    last = [0.0]

    def show(done: int, total: int, tokens: int) -> None:
        now = time.perf_counter()
        if now - last[0] < 0.25 and done < total:
            return
        last[0] = now
        dt = max(now - t0, 1e-6)
        rate = done / dt
        eta = (total - done) / rate if rate > 0 and total > done else 0.0
        pct = f"{100 * done / total:5.1f}%" if total else "     "
        sys.stderr.write(
            f"\r{label}: {pct} {done / 1e6:,.1f}/{total / 1e6:,.1f} MB, {tokens:,} tokens, "
            f"{tokens / dt / 1e6:.2f} M tokens/s, {rate / 1e6:.1f} MB/s, ETA {eta:.0f} s "
        )
        sys.stderr.flush()

    return show


def cached_tokenizer(
    paths: list[Path], text_field: str, kind: str, vocab_size: int, sample_bytes: int, root: Path | None = None
) -> Any:
    """The tokenizer `train` makes from these files, trained once and kept next to their token cache.

    bpe trains on the documents in order up to `sample_bytes` of text (a bounded, deterministic
    sample); char collects the characters of all the text (a character it never saw would become
    the unknown token); bytes needs no data. A changed source retrains it."""
    from gptcli.training import tokenizer as toks

    if kind == "bytes":
        return toks.build_bytes()
    stdin = any(str(p) == "-" for p in paths)
    if stdin:  # nothing to key a cache on
        return toks.make_tokenizer(kind, sample_texts(paths, text_field, sample_bytes), vocab_size)
    root = (root or default_root()).expanduser()
    folder = root / dataset_key(paths, text_field)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"tokenizer-{kind}" + (f"-{vocab_size}-{sample_bytes}" if kind == "bpe" else "")
    sources = [source_print(p) for p in paths]
    with _locked(folder / (name + ".lock")):
        try:
            saved = json.loads((folder / (name + ".json")).read_text(encoding="utf-8"))
            if saved.get("sources") == sources:
                from tokenizers import Tokenizer

                return toks._wrap(Tokenizer.from_str(saved["tokenizer"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if kind == "char":
            chars: set[str] = set()
            for text in iter_documents(paths, text_field):
                chars.update(text)
            tok = toks.build_char(["".join(sorted(chars))])
        else:
            tok = toks.make_tokenizer(kind, sample_texts(paths, text_field, sample_bytes), vocab_size)
        try:
            write_atomic(
                folder / (name + ".json"),
                json.dumps({"sources": sources, "tokenizer": tok.backend_tokenizer.to_str()}) + "\n",
            )
        except OSError as exc:
            raise GptcliError(
                f"cannot write the token cache in {folder}: {exc.strerror or exc}.",
                hint="Free some space, or pass --cache DIR on another disk.",
            ) from exc
        return tok


def prepare(
    data: list[str],
    *,
    val_data: list[str] | None = None,
    text_field: str = "text",
    tokenizer: str | None = None,
    tokenizer_type: str = "bpe",
    vocab_size: int = 8192,
    tokenizer_sample_mb: float = DEFAULT_SAMPLE_MB,
    cache: str | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """`gptcli prepare`: tokenize the data (and validation data) into the token cache up front, with
    the tokenizer `gptcli train` would use given the same options, so that train starts at once."""
    from gptcli import console
    from gptcli.data import expand_paths
    from gptcli.errors import UsageError
    from gptcli.training import tokenizer as toks

    paths = expand_paths(data)
    val_paths = expand_paths(val_data) if val_data else []
    if any(str(p) == "-" for p in paths + val_paths):
        raise UsageError("prepare caches files; stdin ('-') cannot be cached.", hint="Save it to a file first.")
    root = Path(cache).expanduser() if cache else default_root()
    t0 = time.perf_counter()
    if tokenizer:
        tok, kind = toks.load_existing(tokenizer, trust_remote_code), tokenizer
    else:
        if progress and tokenizer_type != "bytes":
            console.info(f"tokenizer: training {tokenizer_type} on the data (or reusing the cached one)")
        tok = cached_tokenizer(paths, text_field, tokenizer_type, vocab_size, int(tokenizer_sample_mb * 1e6), root)
        kind = tokenizer_type
    summary: dict[str, Any] = {"cache": str(root), "tokenizer": kind, "vocab_size": len(tok)}
    for what, ps, key in (("training data", paths, "data"), ("validation data", val_paths, "val_data")):
        if not ps:
            continue
        show = stderr_progress(f"tokenizing the {what}") if progress else None
        t1 = time.perf_counter()
        try:
            entry = ensure(
                ps,
                tok,
                text_field,
                root=root,
                what=what,
                note=console.info if progress else lambda m: None,
                progress=show,
            )
        finally:
            if show is not None:
                sys.stderr.write("\n")
        summary[key] = {
            "folder": str(entry.folder),
            "documents": entry.n_documents,
            "tokens": entry.n_tokens,
            "dtype": entry.manifest["dtype"],
            "bytes": sum(s["size"] for s in entry.manifest["sources"]),
            "seconds": round(time.perf_counter() - t1, 3),
        }
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary
