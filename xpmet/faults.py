"""Test-only kill points: ``XPMET_FAULT=point:N[,point:N]`` makes the process exit (``os._exit(97)``,
no cleanup, like a kill) the Nth time it reaches ``fault(point)`` (N=1 when omitted).

Points: ``before_commit`` / ``after_commit`` (each file load, xpmet.etl.provenance), ``after_file``
(the loader run, after each file's result), ``xmatch_before_commit``, ``predict_after_chunk``,
``export_after_block``, ``export_before_register``, ``train_after_epoch``, ``train_after_weights``,
``train_before_register``, ``train_after_register``, ``clean_before_close`` (the cleaned copy
half-written), ``clean_before_replace`` (written, not yet renamed over the training file).
Unset in normal use: one dictionary lookup per call.
"""
from __future__ import annotations

import os
import sys

EXIT_CODE = 97
_counts: dict[str, int] = {}


def _plan() -> dict[str, int]:
    out = {}
    for item in filter(None, os.environ.get("XPMET_FAULT", "").split(",")):
        name, _, n = item.partition(":")
        out[name.strip()] = int(n or 1)
    return out


def fault(point: str) -> None:
    """Exit here when XPMET_FAULT names this point and it has now been reached N times."""
    if "XPMET_FAULT" not in os.environ:
        return
    want = _plan().get(point)
    if want is None:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] >= want:
        sys.stderr.write(f"XPMET_FAULT: exiting at {point}:{want}\n")
        sys.stderr.flush()
        os._exit(EXIT_CODE)
