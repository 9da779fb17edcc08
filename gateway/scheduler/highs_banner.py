"""HiGHS (1.16 on) prints a two-line banner to the process's standard output the first time a
solver is made, from C, past Python's ``sys.stdout`` and before any option can turn output off.
It would land in what a command prints (``gateway evaluate`` writes its JSON to stdout), so the
first solver is made here with file descriptor 1 pointed at /dev/null; later ones print nothing."""

from __future__ import annotations

import os
import sys

import highspy


def silence() -> None:
    """Make the process's first HiGHS solver without letting it print. Call it single-threaded
    (at import), since it briefly redirects the whole process's stdout."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout to protect
        highspy.Highs()  # type: ignore[no-untyped-call]
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highspy.Highs()  # type: ignore[no-untyped-call]
    finally:
        os.dup2(saved, 1)
        os.close(saved)
