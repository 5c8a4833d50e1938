"""docker-compose.yml cannot run here (no Docker engine): check what can be checked without it."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_builds_q3c_server_with_matching_url():
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    db = spec["services"]["db"]
    assert (ROOT / db["build"] / "Dockerfile").exists()
    dockerfile = (ROOT / db["build"] / "Dockerfile").read_text()
    assert "postgresql-15-q3c" in dockerfile and "FROM postgres:15" in dockerfile
    assert "CREATE EXTENSION IF NOT EXISTS q3c" in (ROOT / "db/init/01-q3c.sql").read_text()
    env = db["environment"]
    host_port = db["ports"][0].split(":")[-2]
    url = f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@localhost:{host_port}/{env['POSTGRES_DB']}"
    assert url in (ROOT / "docker-compose.yml").read_text()
    assert url in (ROOT / "README.md").read_text()
