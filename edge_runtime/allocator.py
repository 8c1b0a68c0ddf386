"""Keep glibc from handing the front end's large buffers back to the OS after every clip.

Each clip's STFT makes temporaries of several MB (frames x window, the complex spectrum). Under
glibc's default, self-adjusting mmap and trim thresholds, whether such buffers stay in the heap
depends on what the process allocated before: in a process that had read its audio with
soundfile, the front end of a 10 s clip took about 2400 minor page faults every clip (the
buffers returned to the OS when freed and faulted in again, 4 KB at a time) and about twice
the time (24 ms instead of 11 on the 2-core test machine). Fixed thresholds keep them in the
heap; the process then holds on to its peak working set, which a device that scores clip after
clip needs anyway.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest dynamic threshold: blocks up to 32 MB come from the heap
TRIM_THRESHOLD = 64 << 20  # free memory kept at the top of the heap before it is returned
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; returns whether they were set.

    Does nothing with ``MTAD_MALLOC=default``, where the user set them (``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``, or ``glibc.malloc.*`` in ``GLIBC_TUNABLES``),
    or where the C library is not glibc (musl's ``mallopt`` is a no-op). On 32-bit glibc the mmap
    threshold is refused (too large) and the result is False. Every mtad command calls it first.
    """
    if os.environ.get("MTAD_MALLOC") == "default":
        return False
    if not sys.platform.startswith("linux") or any(v in os.environ for v in USER_SETTINGS):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    trim = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    mmap = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)  # refused above 512 KB on 32-bit glibc (armhf)
    return bool(trim and mmap)
