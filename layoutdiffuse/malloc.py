"""Keep freed memory inside the process (glibc Linux): fewer page faults in CPU training steps.

A CPU training step allocates and frees the same tens of megabytes of activations every step.
With its default settings glibc's ``malloc`` hands much of that back to the kernel when it is
freed: blocks above the mmap threshold are unmapped, and a free region of more than the trim
threshold at the top of the heap is released. The next step then touches fresh pages and pays a
page fault (and the kernel's zeroing) for each 4 KiB. :func:`retain_freed_memory` sets a high,
fixed mmap threshold and a 1 GiB trim threshold, so freed blocks are reused instead.

``python -m layoutdiffuse`` calls it at start-up (``LAYOUTDIFFUSE_MALLOC=system`` keeps glibc's
defaults); in a notebook or script call it yourself. It changes process-wide allocator settings,
which is why importing the package never does. Measured effect: ``benchmarks/bench_malloc.py``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
from .errors import UserError

log = logging.getLogger(__name__)

#: ``mallopt`` parameter numbers (glibc ``malloc.h``)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: opt-out: ``LAYOUTDIFFUSE_MALLOC=system`` leaves the allocator as it is
ENV = "LAYOUTDIFFUSE_MALLOC"


def retain_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Make glibc ``malloc`` serve blocks up to ``mmap_threshold`` bytes from the heap and keep up
    to ``trim_threshold`` bytes of freed heap memory for reuse. Process-wide; idempotent.

    ``mmap_threshold`` may be at most 32 MiB (glibc's limit on 64-bit systems); larger blocks are
    still mapped and unmapped per allocation. Returns ``True`` when applied, ``False`` when
    skipped: not glibc Linux, or ``LAYOUTDIFFUSE_MALLOC=system``. Any other value of that variable
    is an error (``ValueError``), as is a threshold glibc refuses.
    """
    choice = os.environ.get(ENV, "retain")
    if choice not in ("retain", "system"):
        raise UserError(f"{ENV}={choice!r}: allowed values are 'retain' (the default) and 'system' (glibc defaults)")
    if choice == "system" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    settings = (("mmap_threshold", M_MMAP_THRESHOLD, mmap_threshold), ("trim_threshold", M_TRIM_THRESHOLD, trim_threshold))
    for name, _, value in settings:  # check both before changing either
        if not 0 <= value < 2**31:
            raise UserError(f"{name}={value} bytes: allowed is 0 <= {name} < 2**31")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    for name, param, value in settings:
        if not libc.mallopt(param, ctypes.c_int(value)):
            raise UserError(f"glibc refused {name}={value} (mallopt returned 0; mmap_threshold must be "
                             f"at most 32 MiB on 64-bit systems)")
    log.debug("malloc: mmap_threshold=%d, trim_threshold=%d", mmap_threshold, trim_threshold)
    return True
