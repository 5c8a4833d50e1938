"""Crossmatch of survey rows to Gaia DR3: algorithms chosen by name, and the versioned runs."""
from xpmet.xmatch.algorithms import ALGORITHMS, CrossmatchAlgorithm, algorithm  # noqa: F401
from xpmet.xmatch.run import (  # noqa: F401
    DEFAULT_RADII, LOCK_KEY, XmatchParams, XmatchRun, current_version, run_xmatch, survey_parameters, take_lock)
