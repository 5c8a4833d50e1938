"""Machine learning: from the ``training_set`` view to validated models.

- :mod:`xpmet.ml.export`     training_set -> chunked HDF5 (layout, splits, attributes documented there)
- :mod:`xpmet.ml.dataset`    reading a split (or a database batch) into model-ready arrays
- :mod:`xpmet.ml.normalise`  G-flux normalisation, scalers and the XP noise model (fitted on train only)
- :mod:`xpmet.ml.models`     estimator and emulator networks, their likelihoods, the emulator's per-star fit
- :mod:`xpmet.ml.train`      the training loop and the model directory
- :mod:`xpmet.ml.inference`  ``load_predictor(model_dir).predict(batch)`` (bits: ``xpmet.flags.PREDICTION_BITS``)
- :mod:`xpmet.ml.evaluate`   metrics (overall, per G and [Fe/H] bin, on never-surveyed stars) and plots
- :mod:`xpmet.ml.photometry` GaiaXPy synthetic photometry (Pristine CaHK, SDSS g, Gaia G/BP/RP)
"""
