"""The one database-to-numpy path: binary COPY of fixed-width rows, decoded block by block."""
from __future__ import annotations

import numpy as np

from predict_helpers import insert_sky
from xpmet.db.engine import raw_connect
from xpmet.db.models.columns import fixed_width_columns
from xpmet.io.copyout import select_arrays


def test_select_arrays_equals_a_plain_select_with_nulls_as_nan(clean_db):
    insert_sky(300, seed=4, missing_bp_every=7)
    cols = fixed_width_columns(("source_id", "bp_coefficients", "rp_coefficient_errors", "phot_g_mean_mag", "parallax"))
    sql = (f"SELECT {', '.join(e for e, _ in cols)} FROM xpmet.xp_continuous x "
           "JOIN xpmet.gaia_source g USING (source_id) WHERE x.source_id > %s ORDER BY x.source_id")
    with raw_connect() as c:
        blocks = list(select_arrays(c, sql, (0,), [col for _, col in cols], max_rows=64))
        plain = c.execute("SELECT x.source_id, x.bp_coefficients, x.rp_coefficient_errors, g.phot_g_mean_mag "
                          "FROM xpmet.xp_continuous x JOIN xpmet.gaia_source g USING (source_id) "
                          "ORDER BY x.source_id").fetchall()
    assert len(blocks) >= 300 // 64                      # streamed in blocks, not one piece
    got = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    assert got["source_id"].tolist() == [r[0] for r in plain]
    assert got["bp_coefficients"].shape == (300, 55) and got["rp_coefficient_errors"].dtype == np.float32
    for i, r in enumerate(plain):
        if r[1] is None:
            assert np.isnan(got["bp_coefficients"][i]).all()     # a NULL band is a row of NaN
        else:
            np.testing.assert_array_equal(got["bp_coefficients"][i], np.asarray(r[1]))
        assert got["phot_g_mean_mag"][i] == np.float32(r[3])
    assert np.isnan(got["bp_coefficients"][::7]).all()
