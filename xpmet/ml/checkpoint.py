"""Loading ``weights.pt`` and ``checkpoint.pt``: data only, never code.

torch.load with ``weights_only=True`` unpickles tensors, numbers, strings and plain containers and
refuses anything else, so a model directory from someone else cannot run code when it is loaded.
What ``xpmet train`` saves is built from those types only (state dicts, lists, dicts, floats).
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from xpmet.errors import XpmetError


def load(path, device="cpu"):
    """torch.load(path, weights_only=True), with a one-line XpmetError for a refused or unreadable file."""
    path = Path(path)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"Unsupported (global: GLOBAL \S+|operand \S+)", str(e))
        raise XpmetError(f"{path} was not loaded: it holds something other than tensors and plain data"
                         f"{' (' + m.group(0) + ')' if m else ''}. Only files written by `xpmet train` are "
                         "accepted.") from None
    except (RuntimeError, EOFError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise XpmetError(f"{path} is not a readable model file: {first[:200]}") from None
