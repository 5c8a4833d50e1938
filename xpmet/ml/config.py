"""What ``xpmet train`` runs: :class:`TrainConfig` and its defaults, the one source the CLI, the Python
API, the demo and the benchmarks read. Free of torch, so ``xpmet train --help`` stays fast.

>>> from xpmet.ml.config import TrainConfig
>>> TrainConfig(kind="emulator").hidden
(128, 128, 128)
"""
from __future__ import annotations

from dataclasses import dataclass

from xpmet.errors import XpmetError

KINDS = ("estimator", "emulator")
INPUTS = ("xp", "xp+gaia")
AUGMENT_NOISE = ("auto", "diagonal")
#: hidden layer widths when none are given
HIDDEN = {"estimator": (256, 256), "emulator": (128, 128, 128)}


@dataclass
class TrainConfig:
    kind: str = "estimator"
    hidden: tuple | None = None  # None: HIDDEN[kind]
    epochs: int = 200
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-5
    patience: int = 15           # early stopping: epochs without a better validation loss
    seed: int = 0
    device: str = "auto"         # auto | cpu | cuda
    ensemble: int = 1
    augment: float = 0.5         # fraction of each batch degraded to a fainter magnitude (estimator)
    inputs: str = "xp+gaia"      # estimator: "xp" (coefficients only) or + parallax and colours (+ 2MASS/WISE)
    valid_copies: int = 3        # estimator: validation stars degraded this many times to the target G (0: as observed)
    prior_weight: bool = False   # estimator: weight training stars by target/labelled G density
    calibrate_sigma: bool = True # estimator: scale the stated uncertainties to the degraded validation residuals
    augment_noise: str = "auto"  # estimator: "auto" (each star's covariance when the file has correlations) | "diagonal"
    dropout: float = 0.0
    clip: float = 10.0           # gradient-norm clipping (0: off); steadies the heteroscedastic loss
    correlations: bool = False   # emulator: chi-squared with the full covariance (needs an export with correlations)
    name: str | None = None
    max_train: int | None = None

    def __post_init__(self):
        for value, allowed, what in ((self.kind, KINDS, "model kind"), (self.inputs, INPUTS, "inputs"),
                                     (self.augment_noise, AUGMENT_NOISE, "augment_noise")):
            if value not in allowed:
                raise XpmetError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
        self.hidden = tuple(int(h) for h in (HIDDEN[self.kind] if self.hidden is None else self.hidden))
