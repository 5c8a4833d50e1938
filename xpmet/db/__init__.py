"""Database access: the embedded cluster, engines, migrations and table models."""
