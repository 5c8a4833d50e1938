"""The shared MetaData of schema ``xpmet``."""
import sqlalchemy as sa

SCHEMA = "xpmet"
metadata = sa.MetaData(schema=SCHEMA)
