# xpmet with Dask distributed: the image of the scheduler, the workers and the client in docker-compose.yml.
# Built from the repository root: docker compose build (context ".").
FROM python:3.11-slim-bookworm
# CPU torch: the default wheel pulls several GB of CUDA libraries (use a CUDA base image for GPU workers)
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch
COPY pyproject.toml README.md alembic.ini /src/
COPY xpmet /src/xpmet
COPY migrations /src/migrations
COPY db/sql /src/db/sql
COPY etl /src/etl
RUN pip install --no-cache-dir "/src[cluster]" && rm -rf /src
# no embedded cluster in a container: XPMET_DATABASE_URL names the db service
WORKDIR /work
