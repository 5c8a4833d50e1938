"""The read-only role as a boundary, --where under it, and checkpoints loaded as data only.

Everything here runs against the real embedded server; every attempted write must fail.
"""
from __future__ import annotations

import json
import pathlib

import pytest
import torch

from xpmet.errors import XpmetError


class _Touch:
    """Unpickling this would create ``path``: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


# -- checkpoints ----------------------------------------------------------------------------------
def test_checkpoint_with_code_is_refused_without_running_it(tmp_path):
    from xpmet.ml import checkpoint
    marker = tmp_path / "ran"
    torch.save({"members": [_Touch(marker)]}, tmp_path / "w.pt")
    with pytest.raises(XpmetError, match="not loaded.*GLOBAL"):
        checkpoint.load(tmp_path / "w.pt")
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(XpmetError, match="not loaded"):
        checkpoint.load(tmp_path / "junk.pt")
    # what xpmet train saves is plain data and loads
    ok = {"members": [{"w": torch.ones(2)}], "best": float("inf"), "opt": {"betas": (0.9, 0.99), "foreach": None}}
    torch.save(ok, tmp_path / "ok.pt")
    back = checkpoint.load(tmp_path / "ok.pt")
    assert back["best"] == float("inf") and torch.equal(back["members"][0]["w"], torch.ones(2))


def test_resume_and_predictor_refuse_a_checkpoint_with_code(tmp_path):
    from xpmet.ml.inference import load_predictor
    from xpmet.ml.train import TrainConfig, train
    marker = tmp_path / "ran"
    import ml_semisynth as semi
    semi.write_file(tmp_path / "data.h5", n=400, n_faint=10)
    out = tmp_path / "model"
    out.mkdir()
    torch.save({"member": 0, "members": [], "history": [], "config": _Touch(marker)}, out / "checkpoint.pt")
    with pytest.raises(XpmetError, match="checkpoint.pt was not loaded"):
        train(tmp_path / "data.h5", out, TrainConfig(hidden=(8,), epochs=1), resume=True, register=False,
              progress=False)
    torch.save({"members": [_Touch(marker)], "kind": "estimator", "hidden": [8]}, out / "weights.pt")
    (out / "config.json").write_text(json.dumps({"kind": "estimator"}))
    with pytest.raises(XpmetError, match="weights.pt was not loaded"):
        load_predictor(out)
    assert not marker.exists()
