"""This process's CPU memory allocator: keep freed memory for reuse instead of returning it.

glibc's ``malloc`` serves a block above its mmap threshold (at most 32 MiB unless set) with a fresh
mapping, and trims the heap whenever enough at its top is free. A CNN's forward pass on the CPU
allocates activations of that size on every batch (ResNet-18 at batch 64: 6-100 MiB each), so each
batch page-faults all of them afresh: about 2 million faults per 256 images, a third of the bare
pass's time on a 2-core Xeon (``bench/RESULTS.md``). :func:`keep_freed_memory` tells glibc to keep
them instead; the ``lavise-fast`` command does it unless given ``--release-memory``.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["keep_freed_memory", "MMAP_THRESHOLD", "TEMPORARY_BYTES"]

MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap
# The most bytes of one temporary in the sweep's chunked work (pooling, the head, scoring, groups):
# under glibc's defaults a block above 32 MiB is mapped afresh, a page fault per 4 KiB on every use,
# and its frees shrink the heap that the model's forward pass reuses.
TEMPORARY_BYTES = 16 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (glibc's malloc.h)
_NEVER_TRIM = 2**31 - 1


def keep_freed_memory() -> bool:
    """Makes glibc keep freed memory for reuse: blocks under ``MMAP_THRESHOLD`` come from the heap
    (``mallopt(M_MMAP_THRESHOLD)``) and the heap is not trimmed (``mallopt(M_TRIM_THRESHOLD)``). It
    holds for the whole process and for the rest of its life; the resident memory then stays at its
    peak instead of shrinking between batches. The same as starting Python with
    ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647``.

    Returns:
        Whether it applied: False off Linux or where the C library is not glibc (e.g. musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
