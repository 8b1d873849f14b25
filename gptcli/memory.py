"""Process memory while loading a model: the load's temporary buffers and the weight file's pages
go back to the system as soon as they are no longer needed (`returning_freed_memory`,
`drop_file_pages` for each weight copied into a new layout, `release_weight_files` at the end).

Loading copies weights into new layouts (packed, stacked, quantized) and frees the old ones.
glibc's malloc serves large blocks from its heap once a large block has been freed (its mmap
threshold adapts upwards), and the heap keeps freed space that lies between the blocks that stay:
a quantized model then ran with ~50-90 MB of freed load buffers still resident (Llama 91 M int4
folder: 487 MB peak, 434 MB with this). During `returning_freed_memory`, blocks of 64 KiB and
up are mapped one by one, so freeing one returns it at once; afterwards the threshold is fixed
where glibc's adaptive one ends up (32 MiB) so decoding reuses its buffers as before.
Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import sys
from collections.abc import Iterator
from functools import lru_cache

_M_MMAP_THRESHOLD = -3  # mallopt parameter numbers from glibc's malloc.h
_MADV_DONTNEED = 4  # from glibc's sys/mman.h
_LOADING_THRESHOLD = 64 * 1024
_RUNNING_THRESHOLD = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both exist only in glibc
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def returning_freed_memory() -> Iterator[None]:
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _LOADING_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _RUNNING_THRESHOLD)
        libc.malloc_trim(0)


def _storage_span(t: object) -> tuple[int, int] | None:
    import torch

    if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.layout != torch.strided or t.is_mkldnn:
        return None
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.data_ptr() + storage.nbytes()


def _file_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's file-backed mappings (Linux; empty elsewhere)."""
    ranges = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].startswith("/"):
                    start, _, end = fields[0].partition("-")
                    ranges.append((int(start, 16), int(end, 16)))
    except OSError:
        return []
    return ranges


def release_weight_files(model: object) -> int:
    """Copy the tensors that still read from a mapped weight file into process memory, when they
    are a small part of it, so that the file's mapping can close. Returns the bytes copied.

    Weights load as views of the mapped safetensors file. After the CPU fast paths have copied
    the linear layers into packed layouts, only embeddings and norms still point into the file,
    yet every page of the file read so far stays resident while any tensor holds the mapping
    (Llama 91 M bfloat16: 168 MB of file pages kept for 6 MB of embedding and norms). When most
    of the model still reads from the file, it stays mapped: those pages are the weights, and the
    kernel can drop them under pressure where it could not drop a copy.
    """
    import torch

    ranges = _file_mappings()
    if not ranges:
        return 0

    def nbytes(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    def mapped(t: torch.Tensor) -> bool:
        span = _storage_span(t)  # None for oneDNN-packed weights: opaque, always our own copies
        return span is not None and t.numel() > 0 and any(a <= span[0] < b for a, b in ranges)

    module_tensors = [
        (module, kind, name, t)
        for module in model.modules()  # type: ignore[attr-defined]
        for kind, table in (("param", module._parameters), ("buffer", module._buffers))
        for name, t in table.items()
        if t is not None
    ]
    in_files = [entry for entry in module_tensors if mapped(entry[3])]
    total = sum(nbytes(t) for t in {id(e[3]): e[3] for e in module_tensors}.values())
    kept = {id(e[3]): e[3] for e in in_files}
    kept_bytes = sum(nbytes(t) for t in kept.values())
    if not kept or kept_bytes * 2 > total:
        return 0
    copies: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for module, kind, name, t in in_files:
            if id(t) not in copies:  # tied weights stay one tensor
                data = t.detach().clone()
                copies[id(t)] = torch.nn.Parameter(data, requires_grad=t.requires_grad) if kind == "param" else data
            (module._parameters if kind == "param" else module._buffers)[name] = copies[id(t)]
    return kept_bytes


def drop_file_pages(weight: object, model: object) -> int:
    """Give back the pages of the mapped weight file under `weight`, which a new layout (packed,
    stacked, quantized) has just copied, unless a tensor of `model` still reads them (a tied
    embedding). Returns the bytes given back.

    Without this, loading holds the file's pages and the copies together until the end: a model's
    weights twice at the peak. The mapping is private and its pages unmodified, so a later read
    would fetch them from the file again; none is expected.
    """
    libc = _glibc()
    span = _storage_span(weight)
    if libc is None or span is None:
        return 0
    start, end = span
    if not any(a <= start and end <= b for a, b in _file_mappings()):
        return 0
    for t in (*model.parameters(), *model.buffers()):  # type: ignore[attr-defined]
        other = _storage_span(t)
        if other is not None and other[0] < end and start < other[1]:
            return 0
    page = mmap.PAGESIZE
    low, high = -(-start // page) * page, end // page * page  # whole pages only: neighbours keep theirs
    if high <= low:
        return 0
    if libc.madvise(low, high - low, _MADV_DONTNEED) != 0:
        return 0
    return high - low
