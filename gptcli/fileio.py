"""Files gptcli writes and the lines it reads: the two rules every command shares.

Writing: a file appears whole or not at all. Text goes to a temporary file beside the
target (named after the target and this process), is flushed to disk, then renamed over
it. The new file gets the mode the old one had, or the user's normal mode (0666 minus the
umask), not the 0600 of a private temporary file. A symlinked target is written through:
the file it points to is replaced and the link stays. Temporary files left by a process
that was killed are removed the next time the same target is written.

Folders: a folder of files (a checkpoint, a model) is built in a hidden temporary folder,
its files flushed to disk, then renamed into place (`publish_folder`), or its files renamed
one by one into a folder that holds other things too (`publish_files`). A rename within one
file system is atomic, so a kill at any moment leaves either the old folder (or file) or the
new one, never a half-written one; a previous folder of the same name is kept until the new
one is in place. Temporary folders are named `.tmp-NAME-PID` (and `.old-NAME-PID`, a
replaced folder on its way out); a failed build removes its own, and
`remove_stale_folders` removes those another process left behind.

Reading: lines end at "\\n" (or "\\r\\n") only. `str.splitlines()` also splits at form feeds,
U+2028, U+2029, U+0085 and other characters that are valid inside a JSON string or a
sentence, so a JSONL record or an input line holding one would be cut in two. For the
same reason every JSON line gptcli writes comes from `json_line`, which escapes them.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from gptcli.errors import GptcliError, UsageError


def split_lines(text: str) -> list[str]:
    """The lines of `text`, split at "\\n" only, without their "\\n" or "\\r\\n".

    A final newline does not start another (empty) line, like `str.splitlines()`.
    """
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file."""
    return 0o666 & ~_umask()


def resolve_target(path: Path) -> Path:
    """The file a write to `path` should replace: the end of a symlink chain, else `path`."""
    path = Path(path).expanduser()
    if path.is_symlink():
        return Path(os.path.realpath(path))
    return path


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    except OSError:
        return True
    return True


def remove_stale_temporaries(target: Path) -> None:
    """Delete `.NAME.PID.XXXX.tmp` files beside `target` whose process no longer runs."""
    folder = target.parent
    prefix = f".{target.name}."
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        middle = name[len(prefix) : -len(".tmp")].split(".")
        if len(middle) != 2 or not middle[0].isdigit():
            continue
        if not _pid_alive(int(middle[0])):
            try:
                entry.unlink()
            except OSError:
                pass


class AtomicFile:
    """A text file written in full or not at all; `commit()` puts it in place, `discard()` drops it.

    Usable as a context manager: the file is committed when the block ends normally and
    discarded when it raises.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.target = resolve_target(self.path)
        folder = self.target.parent if str(self.target.parent) else Path(".")
        if not folder.is_dir():
            raise UsageError(f"cannot write '{self.path}': folder '{folder}' does not exist.")
        if self.target.is_dir():
            raise UsageError(f"'{self.path}' is a folder, not a file.")
        remove_stale_temporaries(self.target)
        try:
            mode = self.target.stat().st_mode & 0o7777
        except OSError:
            mode = default_mode()
        self.tmp = folder / f".{self.target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise GptcliError(f"cannot write '{self.path}': {exc.strerror or exc}.") from exc
        try:
            os.fchmod(fd, mode)  # not through open()'s mode: that one is masked by the umask
        except OSError:
            pass
        self.file: IO[str] | None = os.fdopen(fd, "w", encoding="utf-8", newline="\n")

    def write(self, text: str) -> None:
        if self.file is None:
            raise GptcliError(f"'{self.path}' is already closed.")
        try:
            self.file.write(text)
        except OSError as exc:
            self.discard()
            raise GptcliError(f"cannot write '{self.path}': {exc.strerror or exc}.") from exc

    def commit(self) -> None:
        if self.file is None:
            return
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None
            os.replace(self.tmp, self.target)
        except OSError as exc:
            self.discard()
            raise GptcliError(f"cannot write '{self.path}': {exc.strerror or exc}.") from exc

    def discard(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None
        try:
            os.unlink(self.tmp)
        except OSError:
            pass

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def write_atomic(path: Path | str, text: str) -> None:
    """Replace `path` with `text` all at once (see the module docstring)."""
    with AtomicFile(path) as f:
        f.write(text)


def _staging(parent: Path, name: str, kind: str = "tmp") -> Path:
    return parent / f".{kind}-{name}-{os.getpid()}"


def _fsync_files(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _fresh_staging(parent: Path, name: str) -> Path:
    tmp = _staging(parent, name)
    if tmp.exists():  # this pid's own, from a build that could not clean up
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def publish_folder(target: Path, build: Callable[[Path], None]) -> Path:
    """Create (or replace) the folder `target` whole: `build` fills a temporary sibling, whose
    files are flushed to disk before it is renamed to `target`. An existing `target` is moved
    aside first and deleted only once the new one is in place. If `build` raises, the temporary
    folder is removed and `target` is untouched."""
    parent = target.parent
    tmp = _fresh_staging(parent, target.name)
    try:
        build(tmp)
        _fsync_files(tmp)
        if target.exists():
            old = _staging(parent, target.name, "old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def publish_files(folder: Path, build: Callable[[Path], None], label: str) -> list[str]:
    """Add the files `build` writes to `folder`, which holds other things too: they are built in
    `folder/.tmp-LABEL-PID`, flushed to disk, then each renamed into `folder`, replacing a file
    of the same name. Returns the names published; the temporary folder is always removed."""
    remove_stale_folders(folder, (f".tmp-{label}-",))
    tmp = _fresh_staging(folder, label)
    try:
        build(tmp)
        _fsync_files(tmp)
        names = sorted(path.name for path in tmp.iterdir())
        for name in names:
            os.replace(tmp / name, folder / name)
        return names
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_folders(parent: Path, prefixes: tuple[str, ...] = (".tmp-", ".old-")) -> None:
    """Delete the temporary folders in `parent` (names starting with `prefixes`) that another
    process left behind, e.g. one killed in the middle of `publish_folder`."""
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    mine = f"-{os.getpid()}"
    for entry in entries:
        if (
            entry.name.startswith(prefixes)
            and not entry.name.endswith(mine)
            and entry.is_dir()
            and not entry.is_symlink()
        ):
            shutil.rmtree(entry, ignore_errors=True)


# --------------------------------------------------------------------------- JSON Lines

# Valid inside a JSON string, but a line break to str.splitlines() (and to JavaScript's JSON.parse).
_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"})


def json_line(obj: Any) -> str:
    """`obj` as one line of strict JSON that every line reader keeps whole.

    Non-ASCII text stays readable, except the three characters other readers split lines at.
    These only ever occur inside JSON strings, where the escape means the same character.
    """
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    except ValueError:
        text = _dumps_non_finite(obj)
    return text.translate(_LINE_BREAKS)


def _dumps_non_finite(obj: Any) -> str:
    """JSON for a value holding inf/nan (read from a `1e999` or a `NaN` in a file): an infinity is
    written as the number `1e999` (valid JSON that reads back as infinity), NaN as null."""
    tag = secrets.token_hex(8)
    tokens = {f"{tag}+": "1e999", f"{tag}-": "-1e999", f"{tag}n": "null"}

    def swap(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return f"{tag}n" if math.isnan(value) else f"{tag}{'+' if value > 0 else '-'}"
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [swap(v) for v in value]
        return value

    text = json.dumps(swap(obj), ensure_ascii=False)
    for placeholder, token in tokens.items():
        text = text.replace(json.dumps(placeholder), token)
    return text
