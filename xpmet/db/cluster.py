"""The embedded PostgreSQL + q3c cluster that xpmet runs for itself when no XPMET_DATABASE_URL is set.

Layout of a cluster root:  data/ (PGDATA), run/ (Unix socket, no TCP), server.log, .lock.
initdb refuses to run as root, so when xpmet runs as root the server runs as an unprivileged
service user (``xpmet``, created on first use). That user cannot traverse private directories
such as /root or pytest's /tmp/pytest-of-root, so the cluster root is XPMET_HOME/cluster when
the service user can reach it and /var/lib/xpmet/clusters/<hash of XPMET_HOME> otherwise.
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from xpmet.errors import XpmetError

DB_NAME = "xpmet"
SUPERUSER = "xpmet"
PORT = 5432  # only names the socket file: the server listens on no TCP port
SERVICE_USER = os.environ.get("XPMET_SERVICE_USER", "xpmet")
RELOCATED_ROOT = Path("/var/lib/xpmet/clusters")

INSTALL_HINT = "apt-get install postgresql-15 postgresql-15-q3c (Debian/Ubuntu; ./run.sh does it for you)"

SERVER_SETTINGS = {
    "listen_addresses": "''",
    "port": str(PORT),
    "shared_buffers": "'512MB'",
    "work_mem": "'64MB'",
    "maintenance_work_mem": "'512MB'",
    "max_wal_size": "'4GB'",
    "checkpoint_timeout": "'15min'",
    # q3c's huge cost estimates switch JIT on, which only slows these queries down.
    "jit": "off",
    "logging_collector": "off",
}


def find_bin_dir() -> Path:
    """The newest PostgreSQL server binaries on the machine (XPMET_PG_BIN overrides)."""
    override = os.environ.get("XPMET_PG_BIN")
    candidates = [Path(override)] if override else []
    candidates += sorted((Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
                         key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                         reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for c in candidates:
        if (c / "initdb").exists() and (c / "pg_ctl").exists() and (c / "postgres").exists():
            return c
    raise XpmetError("PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found. "
                     f"Install them: {INSTALL_HINT}, or set XPMET_PG_BIN to their directory, "
                     "or point XPMET_DATABASE_URL at a server that has q3c.")


def check_q3c(bin_dir: Path) -> None:
    pg_config = bin_dir / "pg_config"
    share = None
    if pg_config.exists():
        share = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True).stdout.strip()
    major = bin_dir.parent.name
    share = Path(share or f"/usr/share/postgresql/{major}")
    if not (share / "extension" / "q3c.control").exists():
        pkg = f"postgresql-{major}-q3c" if major.isdigit() else "the q3c extension"
        raise XpmetError(f"The q3c extension is not installed for the PostgreSQL server in {bin_dir}. "
                         f"Install it: apt-get install {pkg}")


def _service_account():
    """(uid, gid, name) the server runs as: ourselves, or the service user when we are root."""
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.geteuid())
        return pw.pw_uid, pw.pw_gid, pw.pw_name
    try:
        pw = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        r = subprocess.run([useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent",
                            "--shell", "/usr/sbin/nologin", SERVICE_USER], capture_output=True, text=True)
        if r.returncode != 0 and "already exists" not in r.stderr:
            raise XpmetError(f"Could not create the service user {SERVICE_USER!r} that runs the embedded "
                             f"server as root: {r.stderr.strip()}. Create it by hand, or run xpmet as an "
                             "ordinary user.")
        pw = pwd.getpwnam(SERVICE_USER)
    return pw.pw_uid, pw.pw_gid, pw.pw_name


def _can_traverse(path: Path, uid: int, gid: int) -> bool:
    """Whether uid/gid may enter every directory from / down to path (those that exist)."""
    p = path
    chain = []
    while True:
        chain.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in chain:
        try:
            st = d.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return False
    return True


class Cluster:
    """One embedded cluster, identified by its XPMET_HOME."""

    def __init__(self, home: Path):
        self.home = Path(home)
        self.uid, self.gid, self.user = _service_account()
        if os.geteuid() == 0 and not _can_traverse(self.home, self.uid, self.gid):
            digest = hashlib.sha1(str(self.home).encode()).hexdigest()[:12]
            self.root = RELOCATED_ROOT / digest
        else:
            self.root = self.home / "cluster"
        self.data = self.root / "data"
        self.run = self.root / "run"
        self.log = self.root / "server.log"

    # -- helpers -------------------------------------------------------------
    def url(self, user: str = SUPERUSER, password: str | None = None) -> str:
        """libpq URL (psql "$(xpmet db url)" works); SQLAlchemy gets the +psycopg form from engine.py."""
        auth = quote(user) + (":" + quote(password) if password else "")
        return f"postgresql://{auth}@/{DB_NAME}?host={quote(str(self.run), safe='')}&port={PORT}"

    def _as_service(self, args, check=True, timeout=120):
        kw = {}
        if os.geteuid() == 0:
            kw = dict(user=self.uid, group=self.gid, extra_groups=[])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = env.get("LC_ALL", "C.UTF-8")
        r = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=str(self.root),
                           env=env, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise XpmetError(f"{Path(str(args[0])).name} failed ({r.returncode}): "
                             f"{(r.stderr or r.stdout).strip()}\nSee the server log: {self.log}")
        return r

    @contextmanager
    def _lock(self):
        """Serialise start/stop between xpmet processes on the same cluster."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _prepare_root(self):
        self.root.mkdir(parents=True, exist_ok=True)
        st = self.root.stat()
        if os.geteuid() == 0:
            if st.st_uid != self.uid:
                os.chown(self.root, self.uid, self.gid)
        elif st.st_uid != os.geteuid():
            owner = pwd.getpwuid(st.st_uid).pw_name
            raise XpmetError(f"The cluster directory {self.root} belongs to user {owner!r}. Run xpmet as "
                             f"{owner!r}, or set XPMET_HOME to a directory of your own.")
        os.chmod(self.root, 0o700)

    def _check_data_owner(self):
        st = self.data.stat()
        if st.st_uid != self.uid:
            try:
                owner = pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                owner = str(st.st_uid)
            raise XpmetError(f"The data directory {self.data} belongs to {owner!r}, but the server must run as "
                             f"{self.user!r}. Run xpmet as {owner!r}, fix the owner "
                             f"(chown -R {self.user} {self.root}), or choose another XPMET_HOME.")

    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def _initdb(self, bin_dir: Path):
        """initdb into a scratch directory and rename it: a killed initdb leaves no half cluster."""
        scratch = self.root / "data.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        self._as_service([bin_dir / "initdb", "-D", scratch, "-U", SUPERUSER, "-E", "UTF8",
                          "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256",
                          "--no-instructions"])
        with open(scratch / "postgresql.conf", "a") as f:
            f.write("\n# --- xpmet embedded cluster ---\n")
            f.write(f"unix_socket_directories = '{self.run}'\n")
            for k, v in SERVER_SETTINGS.items():
                f.write(f"{k} = {v}\n")
        os.rename(scratch, self.data)

    def _pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def running(self) -> bool:
        """True when a postgres process owns this data directory (a stale postmaster.pid does not count)."""
        pid = self._pid()
        if pid is None:
            return False
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, PermissionError):
            return False
        return b"postgres" in cmd or b"postmaster" in cmd

    # -- public --------------------------------------------------------------
    def start(self) -> bool:
        """Start (initialising on first use); idempotent. Returns whether this call launched the server."""
        bin_dir = find_bin_dir()
        check_q3c(bin_dir)
        with self._lock():
            self._prepare_root()
            if not self.initialised():
                self._initdb(bin_dir)
            self._check_data_owner()
            launched = not self.running()
            if launched:
                pidfile = self.data / "postmaster.pid"
                if pidfile.exists():  # left by a crash; its pid is gone or is not a postgres
                    pidfile.unlink()
                self.run.mkdir(exist_ok=True)
                if os.geteuid() == 0:
                    os.chown(self.run, self.uid, self.gid)
                os.chmod(self.run, 0o700)
                r = self._as_service([bin_dir / "pg_ctl", "start", "-D", self.data, "-l", self.log,
                                      "-w", "-t", "60"], check=False)
                if r.returncode != 0:
                    tail = self.log.read_text()[-1500:] if self.log.exists() else ""
                    raise XpmetError(f"The embedded PostgreSQL server did not start: {r.stderr.strip()}\n"
                                     f"Last lines of {self.log}:\n{tail}")
            self._ensure_database(bin_dir)
        return launched

    def _ensure_database(self, bin_dir: Path):
        import psycopg
        base = f"host={self.run} port={PORT} user={SUPERUSER}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(base + " dbname=postgres", autocommit=True) as conn:
                    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone():
                        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
                break
            except psycopg.errors.DuplicateDatabase:
                break
            except psycopg.OperationalError as e:
                if time.monotonic() > deadline:
                    raise XpmetError(f"The embedded server in {self.data} does not accept connections on "
                                     f"{self.run}: {str(e).strip()}\nSee {self.log}; `xpmet db stop` then "
                                     "`xpmet db start` restarts it.") from None
                time.sleep(0.2)
        with psycopg.connect(base + f" dbname={DB_NAME}", autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS q3c")

    def stop(self) -> bool:
        """Stop the server if it runs; returns whether it was running."""
        with self._lock():
            if not self.initialised() or not self.running():
                return False
            self._as_service([find_bin_dir() / "pg_ctl", "stop", "-D", self.data, "-m", "fast", "-w", "-t", "60"])
            return True

    def status(self) -> dict:
        return {"home": str(self.home), "cluster": str(self.root), "initialised": self.initialised(),
                "running": self.running(), "pid": self._pid() if self.running() else None,
                "server_user": self.user, "socket_dir": str(self.run), "url": self.url(), "log": str(self.log)}

    def destroy(self) -> None:
        """Stop the server and delete the cluster's files (tests use it to clean up)."""
        if self.initialised() and self.running():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

