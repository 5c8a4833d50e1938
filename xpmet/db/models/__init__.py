"""SQLAlchemy table definitions of schema ``xpmet``; one module per concern, one MetaData.

Migrations are written by hand (functional q3c indexes and views are invisible to
autogenerate); tests/test_migrations.py checks that these models match the migrated schema.
"""
from xpmet.db.models.base import SCHEMA, metadata  # noqa: F401
from xpmet.db.models import core  # noqa: F401
from xpmet.db.models.core import (etl_load, gaia_source, models, predictions, survey,  # noqa: F401
                                  survey_star, training_export, xp_continuous)
from xpmet.db.models import xmatch as xmatch_models  # noqa: F401
from xpmet.db.models.xmatch import label_setting, xmatch, xmatch_run  # noqa: F401
from xpmet.db.models.calibration import survey_calibration  # noqa: F401
from xpmet.db.models import photometry as photometry_models  # noqa: F401
