"""The predicted metallicities (view ``xpmet.metallicity``, one model) as a HATS catalogue for LSDB.

The view is streamed out of the database with one binary COPY (one snapshot, decoded by numpy
block by block) into Parquet part files, which hats-import's collection pipeline partitions by
HEALPix on a Dask cluster, with a margin catalogue (the stars just outside each partition) that
LSDB's crossmatch needs at partition edges. Everything is built in a hidden folder next to
``out_dir`` and renamed into place at the end, so ``out_dir`` is either the previous export or
the complete new one.

    >>> from xpmet.hats import export_hats
    >>> r = export_hats("metallicity_hats")            # newest model with predictions
    >>> import lsdb
    >>> lsdb.open_catalog("metallicity_hats").cone_search(10.68, 41.27, 1800).compute()

Columns keep the view's names and types (float32 stays float32); SQL NULL is a Parquet null.
Units, UCDs and descriptions from the table models are Parquet field metadata (``unit``,
``ucd``, ``description``); hats-import adds the ``_healpix_29`` spatial index column.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xpmet.db.models.columns import type_code
from xpmet.errors import XpmetError
from xpmet.io.copyout import select_arrays
from xpmet.io.pgcopy import Col
from xpmet.query import METALLICITY_COLUMNS

INSTALL = "the HATS export needs hats-import: pip install 'xpmet[hats]'"

#: rows per HEALPix partition: hats-import's default, ~150 MB of this table in memory, a good
#: Dask partition; a small export becomes a few large-area partitions, a full one ~220 of them
PIXEL_THRESHOLD = 1_000_000
#: the order of the sky histogram taken while reading (~27 arcmin pixels): the finest partition
#: order an export needs is chosen from it; past it, hats-import's default order 10
DENSITY_ORDER = 7
FALLBACK_ORDER = 10
#: the margin catalogue's width: a few times the usual Gaia crossmatch radius
MARGIN_ARCSEC = 10.0
#: rows per Parquet part file handed to hats-import: one mapping/splitting task each
ROWS_PER_PART = 2_000_000
#: memory one local worker may need (one partition read, sorted and written, plus the libraries)
WORKER_MEMORY = 2 * 1024 ** 3

_ARROW = {"bool": "bool_", "i2": "int16", "i4": "int32", "i8": "int64", "f4": "float32", "f8": "float64"}


@dataclass(frozen=True)
class HatsResult:
    path: Path
    catalog_name: str
    model_id: int
    n_rows: int
    n_partitions: int
    seconds: float


def _require_hats():
    try:
        import hats  # noqa: F401
        import hats_import  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:
        raise XpmetError(INSTALL) from None


def catalog_name(model_id: int) -> str:
    return f"xpmet_metallicity_model{int(model_id)}"


def _columns():
    """(pgcopy column, SELECT expression, model column) per view column.

    NULL floats come out as NaN so every COPY row has the same width (xpmet.io.copyout); they are
    turned back into nulls in Arrow. The view's other columns are NOT NULL."""
    out = []
    for c in METALLICITY_COLUMNS:
        code = type_code(c)
        expr = f'"{c.name}"'
        if code in ("f4", "f8"):
            expr = f"coalesce({expr}, 'NaN')"
        elif c.nullable:
            raise TypeError(f"{c.name}: a nullable {code} column has no fixed-width COPY form")
        out.append((Col(c.name, code), expr, c))
    return out


def arrow_schema():
    """The catalogue's Arrow schema, with unit, UCD and description as field metadata."""
    import pyarrow as pa
    fields = []
    for col, _, c in _columns():
        meta = {k: str(c.info[k]) for k in ("unit", "ucd", "description") if c.info.get(k)}
        fields.append(pa.field(c.name, getattr(pa, _ARROW[col.type])(), nullable=bool(c.nullable),
                               metadata=meta or None))
    return pa.schema(fields)


def _to_arrow(rows: dict, schema):
    import pyarrow as pa
    arrays = []
    for field in schema:
        v = rows[field.name]
        if v.dtype.kind == "f":
            nan = np.isnan(v)
            arrays.append(pa.array(v, mask=nan) if nan.any() else pa.array(v))
        else:
            arrays.append(pa.array(v))
    return pa.Table.from_arrays(arrays, schema=schema)


def _resolve_model(conn, model_id) -> int:
    """The model the view shows (``model_id``, else the newest with predictions), in conn's snapshot."""
    if model_id is not None:
        if not conn.execute("SELECT 1 FROM xpmet.models WHERE model_id = %s", (int(model_id),)).fetchone():
            raise XpmetError(f"there is no model {model_id}; list them with: SELECT * FROM xpmet.models")
        conn.execute("SELECT set_config('xpmet.model_id', %s, true)", (str(int(model_id)),))
    chosen = conn.execute("SELECT xpmet.metallicity_model()").fetchone()[0]
    if chosen is None:
        raise XpmetError("no predictions in the database yet: run `xpmet predict` first")
    return int(chosen)


@dataclass
class Parts:
    """What stream_parts wrote: the model, its rows, the files and their sky histogram."""
    model_id: int
    n_rows: int
    files: list
    density: np.ndarray  # rows per HEALPix pixel of order DENSITY_ORDER (nested)


def stream_parts(parts: Path, model_id=None, *, url=None, rows_per_part=ROWS_PER_PART,
                 progress=True) -> Parts:
    """The view's rows for one model into Parquet files under ``parts``."""
    import psycopg
    import pyarrow.parquet as pq
    from hats.pixel_math.healpix_shim import radec2pix
    from xpmet.db.engine import raw_connect
    from xpmet.progress import progress_bar

    cols = _columns()
    schema = arrow_schema()
    files: list[Path] = []
    writer = None
    in_part = 0
    n = 0
    density = np.zeros(12 * 4 ** DENSITY_ORDER, np.int64)

    def write(rows):
        nonlocal writer, in_part, n
        if writer is None or in_part >= rows_per_part:
            if writer is not None:
                writer.close()
            files.append(parts / f"part-{len(files):05d}.parquet")
            writer = pq.ParquetWriter(files[-1], schema)
            in_part = 0
        writer.write_table(_to_arrow(rows, schema))
        # the same pixel function hats-import maps with
        density[:] += np.bincount(radec2pix(DENSITY_ORDER, rows["ra"], rows["dec"]), minlength=len(density))
        k = len(rows[cols[0][0].name])
        in_part += k
        n += k
        bar.update(k)

    with raw_connect(url) as conn, progress_bar(enabled=progress, desc="reading xpmet.metallicity",
                                                unit=" rows", unit_scale=True) as bar:
        # One snapshot for the model choice and the rows; read-only, the view is never changed here.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        try:
            chosen = _resolve_model(conn, model_id)
            select = ", ".join(e for _, e, _ in cols)
            for rows in select_arrays(conn, f"SELECT {select} FROM xpmet.metallicity", None,
                                      [c for c, _, _ in cols]):
                write(rows)
        except psycopg.errors.UndefinedTable:
            raise XpmetError("the database has no xpmet.metallicity view: run `xpmet db migrate`") from None
        finally:
            if writer is not None:
                writer.close()
            conn.rollback()
    if n == 0:
        raise XpmetError(f"model {chosen} has no predictions: run `xpmet predict` with it first")
    return Parts(chosen, n, files, density)


def finest_order(density: np.ndarray, pixel_threshold: int) -> int:
    """The lowest HEALPix order at which no pixel holds more than ``pixel_threshold`` rows.

    hats-import's binning walks every pixel of this order: order 10 (12.6 million pixels) costs
    ~15 s however small the export, order 7 a fraction of a second."""
    for order in range(DENSITY_ORDER + 1):
        if density.reshape(12 * 4 ** order, -1).sum(axis=1).max() <= pixel_threshold:
            return order
    return FALLBACK_ORDER


def default_workers() -> int:
    """Local worker processes: one per core this process may use, fewer when memory is short."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        import psutil
        by_memory = int(psutil.virtual_memory().available // WORKER_MEMORY)
    except ImportError:
        by_memory = cores
    return max(1, min(cores, by_memory, 16))


def _check_target(out: Path, overwrite: bool) -> bool:
    """Whether ``out`` exists and will be replaced; refuses what must not be touched."""
    if not out.exists() and not out.is_symlink():
        return False
    if out.is_symlink() or not out.is_dir():
        raise XpmetError(f"{out} exists and is not a folder: choose another output folder")
    if not any(out.iterdir()):
        return True
    if not overwrite:
        raise XpmetError(f"{out} already exists: pass --overwrite to replace it")
    # --overwrite deletes a whole folder: only one that an export (or hats-import) wrote
    if not ((out / "collection.properties").is_file() or (out / "hats.properties").is_file()):
        raise XpmetError(f"{out} is not a HATS catalogue (no collection.properties or hats.properties): "
                         "not replacing it; choose another output folder")
    return True


@contextlib.contextmanager
def _client(cluster: str | None, workers: int | None, n_parts: int):
    """(Dask client, its description): ``cluster`` when given, else a local cluster.

    One part file is a small export: worker threads in this process then save the ~10 s each
    worker process spends importing hats-import; a large one gets one process per worker (the
    reduce stage holds the GIL in pandas and Python for part of its time)."""
    if cluster:
        from xpmet.distributed import open_session
        with open_session(cluster) as session:
            yield session.client, cluster
        return
    import distributed
    n = workers or default_workers()
    processes = n_parts > 1 and n > 1
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Port .* is already in use")  # another cluster's port
        local = distributed.LocalCluster(
            n_workers=n if processes else 1, threads_per_worker=1 if processes else n, processes=processes,
            dashboard_address=None, silence_logs=logging.ERROR)
    try:
        with distributed.Client(local) as client:
            yield client, (f"a local Dask cluster ({n} worker processes)" if processes else
                          f"a local Dask cluster (in-process, {n} thread{'s' if n > 1 else ''})")
    finally:
        local.close()


def _import(parts: list[Path], schema_file: Path, staging: Path, name: str, n_rows: int, *,
            pixel_threshold: int, highest_order: int, margin_arcsec: float, workers: int | None,
            cluster: str | None, progress: bool, extra_properties: dict) -> Path:
    """hats-import's collection pipeline on the part files: the catalogue and its margin; returns
    the new collection's folder."""
    import dask
    from hats_import.catalog.file_readers.parquet import ParquetPyarrowReader
    from hats_import.collection.arguments import CollectionArguments
    from hats_import.pipeline import pipeline_with_client
    from xpmet.progress import note

    try:
        builder = CollectionArguments(
            output_path=staging / "catalog",
            output_artifact_name=name,
            tmp_dir=staging / "tmp",
            addl_hats_properties=extra_properties,
            resume=False,
            # hats-import's bars redraw with carriage returns: on a terminal only (logs get the notes)
            progress_bar=progress and sys.stderr.isatty(),
            simple_progress_bar=True,
        ).catalog(
            output_artifact_name=name,
            input_file_list=[str(p) for p in parts],
            file_reader=ParquetPyarrowReader(),
            use_schema_file=str(schema_file),  # keeps the field metadata and nullability in every pixel
            ra_column="ra", dec_column="dec",
            sort_columns="source_id",
            catalog_type="object",
            pixel_threshold=int(pixel_threshold),
            highest_healpix_order=int(highest_order),
            expected_total_rows=int(n_rows),
        )
        if margin_arcsec > 0:
            # the stars within margin_arcsec outside each partition: LSDB's crossmatch then finds
            # neighbours across partition edges
            builder.add_margin(margin_threshold=float(margin_arcsec), is_default=True)
    except ValueError as e:
        raise XpmetError(f"hats-import refused the arguments: {e}") from None
    # local workers keep their scratch space in the staging folder, removed with it
    with dask.config.set({"temporary-directory": str(staging / "dask")}), \
            _client(cluster, workers, len(parts)) as (client, where):
        if progress:
            note(f"partitioning {n_rows} rows into HEALPix pixels with hats-import on {where}")
        quiet = _DropMessage("Looking for catalog - found collection")  # hats' check of its own output
        logging.getLogger().addFilter(quiet)
        try:
            pipeline_with_client(builder, client)
            if progress:
                note("hats-import done")
        except Exception as e:  # noqa: BLE001  hats-import's own failures, told in one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise XpmetError(f"hats-import failed: {type(e).__name__}: {first}") from None
        finally:
            logging.getLogger().removeFilter(quiet)
    return staging / "catalog" / name


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record) -> bool:
        return self.text not in record.getMessage()


def export_hats(out_dir, model_id=None, *, url=None, overwrite: bool = False, workers: int | None = None,
                cluster: str | None = None, pixel_threshold: int = PIXEL_THRESHOLD,
                highest_order: int | None = None, margin_arcsec: float = MARGIN_ARCSEC,
                rows_per_part: int = ROWS_PER_PART,
                progress: bool = True) -> HatsResult:
    """Write the predictions of ``model_id`` (default: the newest model with predictions) with their
    Gaia positions and photometry, as a HATS catalogue in the folder ``out_dir``.

    workers: local Dask worker processes (default: per cores and memory); cluster: a Dask scheduler
    address or ``local:N`` instead (remote workers must see ``out_dir``'s file system).
    pixel_threshold: at most this many rows per HEALPix partition; highest_order: the finest
    partition order (default: the lowest at which no pixel exceeds the threshold, see finest_order).
    margin_arcsec: width of the margin catalogue (neighbours across partition edges) LSDB uses;
    0 for none. ``out_dir`` becomes a HATS collection: the catalogue and its margin, which
    lsdb.open_catalog opens together.
    An existing catalogue in ``out_dir`` is replaced only with ``overwrite``.
    """
    _require_hats()
    from xpmet import __version__
    start = time.perf_counter()
    if int(pixel_threshold) < 1 or int(rows_per_part) < 1:
        raise XpmetError("pixel_threshold and rows_per_part must be at least 1")
    if not 0 <= float(margin_arcsec) <= 3600:
        raise XpmetError(f"margin {margin_arcsec} arcsec: give 0 (no margin) to 3600")
    if highest_order is not None and not 0 <= int(highest_order) <= 19:
        raise XpmetError(f"highest_order {highest_order}: HEALPix orders go from 0 to 19")
    out = Path(out_dir).expanduser().absolute()
    replace = _check_target(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # next to out_dir: the final rename stays on one file system, so it is atomic
        staging = Path(out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
        staging.mkdir()
    except OSError as e:
        raise XpmetError(f"cannot write next to {out}: {e.strerror or e}") from None
    try:
        parts = staging / "parts"
        parts.mkdir()
        got = stream_parts(parts, model_id, url=url, rows_per_part=rows_per_part, progress=progress)
        chosen, n_rows = got.model_id, got.n_rows
        if highest_order is None:
            highest_order = finest_order(got.density, int(pixel_threshold))
        import pyarrow.parquet as pq
        schema_file = staging / "schema.parquet"
        pq.write_table(arrow_schema().empty_table(), schema_file)
        name = catalog_name(chosen)
        built = _import(got.files, schema_file, staging, name, n_rows, pixel_threshold=pixel_threshold,
                        highest_order=highest_order, margin_arcsec=margin_arcsec, workers=workers,
                        cluster=cluster, progress=progress,
                        extra_properties={
                            "obs_title": f"xpmet metallicities, model {chosen}",
                            "obs_description": "Stellar parameters predicted from Gaia DR3 XP spectra by xpmet "
                                               "(view xpmet.metallicity) with Gaia positions and photometry; "
                                               "units and descriptions in the Parquet field metadata",
                            "xpmet_model_id": chosen,
                            "xpmet_version": __version__,
                        })
        shutil.rmtree(parts, ignore_errors=True)
        import hats
        catalog = hats.read_hats(built / name)  # the collection's main catalogue
        if catalog.catalog_info.total_rows != n_rows:
            raise XpmetError(f"hats-import wrote {catalog.catalog_info.total_rows} rows of {n_rows}: "
                             "nothing was replaced")
        n_partitions = len(catalog.get_healpix_pixels())
        _swap_in(built, out, staging, replace)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return HatsResult(out, name, chosen, n_rows, n_partitions, time.perf_counter() - start)


def _swap_in(built: Path, out: Path, staging: Path, replace: bool) -> None:
    """Rename the new catalogue to ``out``; the old one (if any) moves into the staging folder first."""
    try:
        if replace and out.exists():
            os.rename(out, staging / "previous")
        os.rename(built, out)
    except OSError as e:
        with contextlib.suppress(OSError):  # put the previous catalogue back
            if not out.exists() and (staging / "previous").exists():
                os.rename(staging / "previous", out)
        raise XpmetError(f"cannot move the new catalogue to {out} ({e.strerror or e}); "
                         "did another export write it meanwhile?") from None
