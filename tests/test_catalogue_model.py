"""xpmet.metallicity switches to a new model only once its predictions are complete."""
from __future__ import annotations

from predict_helpers import ColourPredictor, insert_sky
from xpmet import query
from xpmet.db.engine import raw_connect
from xpmet.predict import predict


class NewerPredictor(ColourPredictor):
    """A second model (registered under its own name)."""


def _shown():
    with raw_connect() as c:
        model = c.execute("SELECT xpmet.metallicity_model()").fetchone()[0]
        n = c.execute("SELECT count(*) FROM xpmet.metallicity").fetchone()[0]
    return model, n


def test_a_partial_run_does_not_take_over_the_catalogue(clean_db):
    sky = insert_sky(1500, seed=5)
    old = predict(ColourPredictor(), progress=False)
    assert _shown() == (old.model_id, 1500)
    # a newer model predicted for part of the sky only (a --where run; a killed run is the same)
    cut = int(sky["source_id"][100])
    new = predict(NewerPredictor(), where=f"x.source_id < {cut}", progress=False)
    assert new.model_id > old.model_id and new.written == 100
    assert _shown() == (old.model_id, 1500)
    t = query.cone(float(sky["ra"][0]), float(sky["dec"][0]), 30)
    assert t.meta["model_id"] == old.model_id
    # its complete run makes it the catalogue's model
    predict(NewerPredictor(), progress=False)
    assert _shown() == (new.model_id, 1500)
    with raw_connect() as c:   # the reader's query path can evaluate the choice too
        c.execute("SET ROLE xpmet_reader")
        assert c.execute("SELECT xpmet.metallicity_model()").fetchone()[0] == new.model_id
