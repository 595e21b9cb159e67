"""Give freed heap memory back to the OS (glibc malloc_trim), every heap_trim_s, in the API process
and in every render engine process (the CPU pool's render processes included).

Rendering and encoding in many threads (streams, live sessions) spreads allocations over glibc's
per-thread arenas; after the sessions close, their freed blocks stay mapped, and the API
process's RSS stayed at about twice its working set (bench/soak.py and a malloc_trim probe:
670-780 MB before a malloc_trim(0), 355-420 MB after, flat over repeated rounds: not a leak).
A trim walks the arenas once (88 ms at 670 MB on a loaded 2-core machine; every 10 s that is
under 1 %). The render processes showed the same: without a trim, the server's RSS grew 14-50 %
over a one-minute soak (tests/test_soak.py) after the CPU engine became a pool of processes.
On a libc without malloc_trim (musl, macOS) this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util

from flashhead.jobs.retention import Periodic


def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def trim_heap() -> bool:
    """Return free heap pages to the OS; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


def heap_trimmer(interval_s: float) -> Periodic:
    """A thread trimming the heap every `interval_s` (none where the C library cannot)."""
    return Periodic(interval_s if _TRIM is not None else 0, trim_heap, "heap-trim")
