"""How the node's process asks the C allocator to keep less freed memory.

Why: glibc gives each thread that allocates while another does its own arena, and every arena
keeps memory its thread freed for reuse. The node's threads (receiving, decoding, read-ahead,
the analysis, torch's) each took one, and a 600-slice job left each holding pieces of the
stages before: the node's peak was 2.0-2.15 GiB where the same analysis in one thread peaked
at 1.75 GiB. With two arenas the freed memory is reused by whichever thread allocates next:
1.75 GiB, at the same speed (docs/SPEED.md has the runs). Returning freed memory to the system
instead (a fixed mmap threshold, malloc_trim between stages) cost 30-60 % of the end-to-end
time, since this kernel makes first touches of fresh memory dear.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

#: glibc's mallopt parameter number for the arena limit (malloc.h: M_ARENA_MAX).
_M_ARENA_MAX = -8
#: Arenas the node's process may use.
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Limit glibc to ``arenas`` malloc arenas; False where the C library is not glibc.

    Call it before the process starts its threads: an arena limit applies from the first
    thread that needs an arena of its own.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):  # no C library by that name, or not glibc
        logger.debug("malloc arenas not limited: no glibc mallopt")
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(_M_ARENA_MAX, arenas) == 1
