"""xpmet demo end to end on a tiny sky (its own embedded cluster): every step runs for real and
the report carries the numbers those steps produced."""
from __future__ import annotations

import os

import numpy as np
from astropy.table import Table

from xpmet.db.cluster import Cluster
from xpmet.demo import run_demo


def test_demo_runs_every_step_and_reports_real_numbers(xpmet_home, tmp_path):
    out = tmp_path / "demo"
    home_before = os.environ["XPMET_HOME"]
    try:
        rep = run_demo(out, n_stars=700, seed=3, epochs=3, say=lambda m: None, progress=False)
    finally:
        Cluster(out / "home").destroy()
    assert os.environ["XPMET_HOME"] == home_before  # the caller's database is left alone
    assert [s for _, _, s in rep.steps] == ["ok"] * len(rep.steps)
    assert rep.counts["XP spectra"] == 700 == rep.counts["predictions written"]
    assert rep.counts["Gaia sources"] > 700
    assert {z["survey"] for z in rep.zero_points} >= {"apogee", "galah", "lamost"}
    m = rep.metrics["database predictions vs truth (all)"]
    truth = Table.read(out / "sky" / "truth.fits")
    stars = int((np.asarray(truth["has_xp"], bool) & np.isfinite(np.asarray(truth["feh"], float))).sum())
    assert 700 - stars == round(0.017 * 700)  # the simulated quasars and white dwarfs have no [Fe/H]
    assert m["n"] == stars and np.isfinite(m["scatter"])
    cone = Table.read(out / "cone.ecsv")
    assert len(cone) == rep.counts["cone query rows (recommended)"] and cone["recommended"].all()
    assert (out / "plots" / "sky_mean_feh.png").stat().st_size > 10000
    assert any((out / "plots" / "evaluation").glob("*.png"))
    text = (out / "report.txt").read_text()
    assert "SIMULATED" in text and "predictions written" in text
    # A second demo into the same folder replaces the first; any other folder is refused.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("x")
    import pytest
    from xpmet.errors import XpmetError
    with pytest.raises(XpmetError, match="not an earlier demo"):
        run_demo(tmp_path / "mine", say=lambda m: None, progress=False)
    assert (tmp_path / "mine" / "precious.txt").exists()
