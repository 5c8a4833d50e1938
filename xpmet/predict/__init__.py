"""Predict labels for every star with XP and write them into ``xpmet.predictions``, resumably.

The XP table is walked in source_id ranges; a range of Gaia source_ids is a range of HEALPix
level-12 pixels, so each chunk is a compact patch of sky. Per chunk: a binary ``COPY TO`` streams
the rows not yet predicted for the model (an anti-join on the predictions primary key), the model
predicts them batch by batch, and a binary ``COPY FROM`` writes the results in one transaction
that commits at the end of the chunk. A killed run therefore loses at most its open chunks, a
rerun continues where it stopped, and no star is ever written twice for a model. Memory stays at
about one batch per worker whatever the table size.

Three modules with one job each: :mod:`~xpmet.predict.plan` (what is read and in which chunks,
the --where checks), :mod:`~xpmet.predict.pipeline` (one worker: read, predict, write a chunk),
:mod:`~xpmet.predict.run` (the run: lock, processes or Dask, progress).

    >>> from xpmet.predict import predict
    >>> predict("models/estimator-1", where="g.phot_g_mean_mag < 17", batch=4096, workers=2)
"""
from xpmet.predict.plan import (  # noqa: F401
    DEFAULT_NEEDS, LEVEL12_SHIFT, OUTPUTS, PREDICTED, WHERE_CHECK_SAMPLE, WHERE_CHECK_TIMEOUT_MS,
    WHERE_CHUNK_TIMEOUT_MS, check_where, chunk_ranges, input_columns)
from xpmet.predict.pipeline import Worker, load, model_id_for  # noqa: F401
from xpmet.predict.run import LOCK_CLASS, ChunkJob, PredictResult, predict, predict_chunk  # noqa: F401
