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


def test_compose_dask_scheduler_and_workers_next_to_the_server():
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = spec["services"]
    db, sched, worker, client = (services[k] for k in ("db", "scheduler", "worker", "xpmet"))
    # one image, built from the repository with the cluster extra
    build = sched["build"]
    dockerfile = (ROOT / build["context"] / build["dockerfile"]).read_text()
    assert '"/src[cluster]"' in dockerfile and "COPY xpmet /src/xpmet" in dockerfile
    for d in ("migrations", "db/sql", "etl"):  # what the package maps in pyproject.toml
        assert f"COPY {d} /src/{d}" in dockerfile
    assert worker["image"] == client["image"] == sched["image"]
    # workers reach the scheduler on the port it listens on, one thread per worker process
    port = sched["command"][sched["command"].index("--port") + 1]
    assert f"tcp://scheduler:{port}" in worker["command"]
    assert worker["command"][worker["command"].index("--nthreads") + 1] == "1"
    assert f"tcp://scheduler:{port}" in (ROOT / "docker-compose.yml").read_text().split("services:")[0]
    # the client and the workers see the db service with its credentials, and the files at one path
    env = db["environment"]
    url = f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@db:5432/{env['POSTGRES_DB']}"
    assert worker["environment"]["XPMET_DATABASE_URL"] == client["environment"]["XPMET_DATABASE_URL"] == url
    def mounts(service):  # container paths of "host:container[:ro]" (the host part may hold ${VAR:-x})
        return {v.split(":")[-2] if v.split(":")[-1] in ("ro", "rw") else v.split(":")[-1] for v in service["volumes"]}

    assert {"/data", "/work"} <= mounts(worker) and {"/data", "/work"} <= mounts(client)
    for s in (worker, client):
        assert {"db", "scheduler"} <= set(s["depends_on"])
    # the PostgreSQL-only use (docker compose up) starts no Dask services
    assert "profiles" not in db and all("cluster" in s["profiles"] for s in (sched, worker, client))
