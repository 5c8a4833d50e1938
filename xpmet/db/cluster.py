"""The embedded PostgreSQL + q3c cluster that xpmet runs for itself when no XPMET_DATABASE_URL is set.

Layout of a cluster root:  data/ (PGDATA), run/ (Unix socket), server.log, .lock.
initdb refuses to run as root, so when xpmet runs as root the server runs as an unprivileged
service user (``xpmet``, created on first use). That user cannot traverse private directories
such as /root or pytest's /tmp/pytest-of-root, so the cluster root is XPMET_HOME/cluster when
the service user can reach it and /var/lib/xpmet/clusters/<hash of XPMET_HOME> otherwise.

The server listens on its Unix socket only, unless started with ``listen=(host, port)``: then also
on TCP, where every role authenticates with SCRAM-SHA-256 and a password from
XPMET_HOME/db-passwords.json (0600). Local socket connections stay trusted.

As root, the cluster root belongs to the service user, who could plant symbolic links in it:
every chown/chmod/open that root does there refuses to follow one.
"""
from __future__ import annotations

import base64
import errno
import fcntl
import glob
import hashlib
import hmac
import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from xpmet.errors import XpmetError

DB_NAME = "xpmet"
SUPERUSER = "xpmet"
PORT = 5432  # names the socket file when the server listens on no TCP port
SERVICE_USER = os.environ.get("XPMET_SERVICE_USER", "xpmet")
READER = "xpmet_reader"
PASSWORD_FILE = "db-passwords.json"
#: Login shells that mean "no login": an existing account is reused only with one of these.
NOLOGIN_SHELLS = {"nologin", "false"}
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
    # A table created and filled in one transaction (each crossmatch run's partition of xpmet.xmatch)
    # then writes no WAL, only a sync at commit. The cost: no streaming replicas or WAL archiving
    # of this server (back it up with pg_dump); an external server keeps its own wal_level.
    "wal_level": "minimal",
    "max_wal_senders": "0",
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


def sys_uid_max(login_defs: str = "/etc/login.defs") -> int:
    """Highest uid of a system account: SYS_UID_MAX of /etc/login.defs, 999 when it says nothing."""
    try:
        for line in Path(login_defs).read_text().splitlines():
            f = line.split()
            if len(f) >= 2 and f[0] == "SYS_UID_MAX" and f[1].isdigit():
                return int(f[1])
    except OSError:
        pass
    return 999


def check_service_account(pw, uid_max: int | None = None) -> None:
    """Refuse to run the server as an existing account unless it is a system account without a login
    shell: a person's account (or root's) must never own, or be able to log in to, the database files."""
    uid_max = sys_uid_max() if uid_max is None else uid_max
    shell = Path(pw.pw_shell or "").name
    if pw.pw_uid == 0 or pw.pw_uid > uid_max or shell not in NOLOGIN_SHELLS:
        why = ("it is root" if pw.pw_uid == 0 else f"uid {pw.pw_uid} is above SYS_UID_MAX {uid_max}"
               if pw.pw_uid > uid_max else f"its shell {pw.pw_shell or '(none)'} allows logins")
        raise XpmetError(f"The account {pw.pw_name!r} exists but is not a system account without a login shell "
                         f"({why}), so the embedded server will not run as it. Set XPMET_SERVICE_USER to an "
                         "unused name (xpmet creates that system account), or run xpmet as an ordinary user.")


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
    check_service_account(pw)
    return pw.pw_uid, pw.pw_gid, pw.pw_name


def conf_string(value: str) -> str:
    """A postgresql.conf string literal: single quotes doubled, backslashes escaped."""
    if any(c in value for c in "\n\r\0"):
        raise XpmetError(f"{value!r} cannot be written into postgresql.conf (line break or NUL in it)")
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def conf_directory_list(path: str) -> str:
    """unix_socket_directories takes a comma-separated list: one double-quoted element, then conf-quoted."""
    return conf_string('"' + path.replace('"', '""') + '"')


def parse_listen(spec: str) -> tuple[str, int]:
    """HOST:PORT (or [IPv6]:PORT) for --listen; HOST may be '*' for every interface."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.*-]+):(\d{1,5})", spec.strip())
    if not m:
        raise XpmetError(f"--listen {spec!r}: expected HOST:PORT, e.g. 127.0.0.1:5433, 0.0.0.0:5433 or [::1]:5433")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    port = int(port)
    if not 1 <= port <= 65535:
        raise XpmetError(f"--listen {spec!r}: port {port} is not between 1 and 65535")
    if host != "*":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if m.group(1) or not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host):
                raise XpmetError(f"--listen {spec!r}: {host!r} is neither an IP address nor a host name") from None
    return host, port


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores, computed here so the password never reaches the server."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


def _open_private(path: Path, flags: int, mode: int = 0o600) -> int:
    """os.open that never follows a symbolic link in the last component."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as e:
        # ELOOP, or ENOTDIR with O_DIRECTORY: the last component is a symbolic link
        if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise XpmetError(f"{path} is a symbolic link; xpmet does not follow links in its cluster "
                             "directories. Remove it.") from None
        raise


def read_passwords(home: Path) -> dict:
    """Passwords for TCP logins ({role: password}); {} when none were made. Refuses a file others can read."""
    path = Path(home) / PASSWORD_FILE
    try:
        fd = _open_private(path, os.O_RDONLY)
    except FileNotFoundError:
        return {}
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise XpmetError(f"{path} must belong to you and be readable by you only (chmod 600 {path}).")
        try:
            return json.load(f)
        except ValueError:
            raise XpmetError(f"{path} is damaged; delete it and run `xpmet db start --listen ...` again "
                             "(new passwords are made).") from None


def ensure_passwords(home: Path, roles) -> dict:
    """Passwords for ``roles``, made with the secrets module on first use and kept in a 0600 file."""
    current = read_passwords(home)
    missing = [r for r in roles if r not in current]
    if missing:
        current.update({r: secrets.token_urlsafe(24) for r in missing})
        path = Path(home) / PASSWORD_FILE
        Path(home).mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        fd = _open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(current, f)
        os.replace(tmp, path)
    return current


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


def _fix_dir(path: Path, uid: int | None, gid: int | None, mode: int) -> None:
    """chown (as root) and chmod a directory through a descriptor opened without following a link,
    so a link planted in its place cannot redirect root's chown/chmod to another file."""
    fd = _open_private(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if uid is not None and os.fstat(fd).st_uid != uid:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


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
    def _pidfile(self) -> list[str]:
        """Lines of postmaster.pid: pid, data dir, start time, port, socket dir, listen address, ..."""
        try:
            return (self.data / "postmaster.pid").read_text().split("\n")
        except (FileNotFoundError, PermissionError, NotADirectoryError):
            return []

    def port(self) -> int:
        """The running server's port (it also names the socket file), else the default."""
        lines = self._pidfile()
        if self.running() and len(lines) > 3 and lines[3].strip().isdigit():
            return int(lines[3])
        return PORT

    def listening(self) -> tuple[str, int] | None:
        """(address, port) of the running server's TCP listener, or None (Unix socket only)."""
        lines = self._pidfile()
        if self.running() and len(lines) > 5 and lines[5].strip():
            return lines[5].strip(), self.port()
        return None

    def url(self, user: str = SUPERUSER, password: str | None = None) -> str:
        """libpq URL (psql "$(xpmet db url)" works); SQLAlchemy gets the +psycopg form from engine.py."""
        auth = quote(user) + (":" + quote(password, safe="") if password else "")
        return f"postgresql://{auth}@/{DB_NAME}?host={quote(str(self.run), safe='')}&port={self.port()}"

    def tcp_url(self, user: str = SUPERUSER) -> str:
        """URL for remote workers: the TCP address and the role's password (from the 0600 file)."""
        where = self.listening()
        if where is None:
            raise XpmetError("The embedded server does not listen on TCP. Start it with "
                             "`xpmet db start --listen HOST:PORT` (after `xpmet db stop` if it runs).")
        host, port = where
        if host in ("*", "0.0.0.0", "::"):
            host = socket.getfqdn()
        if ":" in host:
            host = f"[{host}]"
        password = read_passwords(self.home).get(user)
        if password is None:
            raise XpmetError(f"No password for {user} in {self.home / PASSWORD_FILE}; run "
                             "`xpmet db start --listen HOST:PORT` to make it.")
        return f"postgresql://{quote(user)}:{quote(password, safe='')}@{host}:{port}/{DB_NAME}"

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
        fd = _open_private(self.root / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _refuse_links(self):
        """The cluster root's own entries are never symbolic links (root chowns and opens them)."""
        for p in (self.root, *(self.root.iterdir() if self.root.is_dir() else ())):
            if p.is_symlink():
                raise XpmetError(f"{p} is a symbolic link; xpmet does not follow links in its cluster "
                                 f"directory {self.root}. Remove it (or choose another XPMET_HOME).")

    def _prepare_root(self):
        self.root.mkdir(parents=True, exist_ok=True)
        self._refuse_links()
        st = self.root.lstat()
        if os.geteuid() != 0 and st.st_uid != os.geteuid():
            owner = pwd.getpwuid(st.st_uid).pw_name
            raise XpmetError(f"The cluster directory {self.root} belongs to user {owner!r}. Run xpmet as "
                             f"{owner!r}, or set XPMET_HOME to a directory of your own.")
        _fix_dir(self.root, self.uid if os.geteuid() == 0 else None, self.gid, 0o700)

    def _check_data_owner(self):
        st = self.data.lstat()
        if stat.S_ISLNK(st.st_mode):
            raise XpmetError(f"{self.data} is a symbolic link; xpmet does not follow links in its cluster "
                             "directory. Remove it.")
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

    def _write_data_file(self, name: str, text: str):
        """Replace data/<name> as the server's user: a new file renamed over the old, never through a link."""
        tmp = self.data / f".{name}.xpmet.tmp"
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        fd = _open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            if os.geteuid() == 0:
                os.fchown(f.fileno(), self.uid, self.gid)
        os.replace(tmp, self.data / name)

    def _initdb(self, bin_dir: Path):
        """initdb into a scratch directory and rename it: a killed initdb leaves no half cluster."""
        scratch = self.root / "data.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        self._as_service([bin_dir / "initdb", "-D", scratch.name, "-U", SUPERUSER, "-E", "UTF8",
                          "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256",
                          "--no-instructions"])
        fd = _open_private(scratch / "postgresql.conf", os.O_WRONLY | os.O_APPEND)
        with os.fdopen(fd, "a") as f:
            f.write("\n# --- xpmet embedded cluster ---\n")
            f.write(f"unix_socket_directories = {conf_directory_list(str(self.run))}\n")
            for k, v in SERVER_SETTINGS.items():
                f.write(f"{k} = {v}\n")
        os.rename(scratch, self.data)

    def _pid(self) -> int | None:
        try:
            return int(self._pidfile()[0])
        except (ValueError, IndexError):
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

    def _tail_log(self, n: int = 1500) -> str:
        try:
            fd = _open_private(self.log, os.O_RDONLY)
        except (OSError, XpmetError):
            return ""
        with os.fdopen(fd, errors="replace") as f:
            return f.read()[-n:]

    # -- public --------------------------------------------------------------
    def start(self, listen: tuple[str, int] | None = None) -> bool:
        """Start (initialising on first use); idempotent. Returns whether this call launched the server.

        listen=(host, port) also listens on TCP (SCRAM passwords, see set_passwords); without it the
        server is Unix-socket only. A server already running is left as it is, unless listen asks
        for another address: then stop it first.
        """
        bin_dir = find_bin_dir()
        check_q3c(bin_dir)
        if "," in str(self.run):  # libpq reads a comma in host= as a list of hosts, and has no escape for it
            raise XpmetError(f"The cluster directory {self.root} has a comma in its path, which PostgreSQL "
                             "clients cannot take as a socket directory; choose an XPMET_HOME without one.")
        if listen is not None:
            read_passwords(self.home)  # a file others can read is refused before the port opens
        with self._lock():
            self._prepare_root()
            if not self.initialised():
                self._initdb(bin_dir)
            self._check_data_owner()
            launched = not self.running()
            if not launched and listen is not None and self.listening() != listen:
                now = self.listening()
                state = f"on {now[0]}:{now[1]}" if now else "without TCP"
                raise XpmetError(f"The embedded server is running {state}; stop it first (`xpmet db stop`), "
                                 f"then `xpmet db start --listen {listen[0]}:{listen[1]}`.")
            if launched:
                pidfile = self.data / "postmaster.pid"
                if pidfile.exists():  # left by a crash; its pid is gone or is not a postgres
                    pidfile.unlink()
                # Local socket trusted (its directory is private); TCP only with a SCRAM password.
                self._write_data_file("pg_hba.conf", "local all all trust\n"
                                                     "host all all all scram-sha-256\n")
                self.run.mkdir(exist_ok=True)
                _fix_dir(self.run, self.uid if os.geteuid() == 0 else None, self.gid, 0o700)
                opts = []
                if listen is not None:
                    # pg_ctl hands -o to a shell: parse_listen allowed no quotes or spaces in host.
                    opts = ["-o", f"-c listen_addresses='{listen[0]}' -c port={int(listen[1])}"]
                # Paths relative to the cluster root (the cwd): pg_ctl pastes them into a shell
                # command line, where a quote in XPMET_HOME would break it.
                r = self._as_service([bin_dir / "pg_ctl", "start", "-D", self.data.name, "-l", self.log.name,
                                      "-w", "-t", "60", *opts], check=False)
                if r.returncode != 0:
                    raise XpmetError(f"The embedded PostgreSQL server did not start: {r.stderr.strip()}\n"
                                     f"Last lines of {self.log}:\n{self._tail_log()}")
            self._ensure_database(bin_dir)
            if listen is not None:
                self.set_passwords()
        return launched

    def set_passwords(self) -> dict:
        """Give the superuser and xpmet_reader (when it exists) their TCP passwords; returns them."""
        import psycopg
        from psycopg import sql
        with psycopg.connect(self._conninfo("postgres"), autocommit=True) as conn:
            roles = [r for (r,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
                                                ([SUPERUSER, READER],))]
            pws = ensure_passwords(self.home, roles)
            for role in roles:
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(scram_verifier(pws[role]))))
        return pws

    def _conninfo(self, dbname: str) -> str:
        from psycopg.conninfo import make_conninfo
        return make_conninfo(host=str(self.run), port=self.port(), user=SUPERUSER, dbname=dbname)

    def _ensure_database(self, bin_dir: Path):
        import psycopg
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self._conninfo("postgres"), autocommit=True) as conn:
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
        with psycopg.connect(self._conninfo(DB_NAME), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS q3c")

    def stop(self) -> bool:
        """Stop the server if it runs; returns whether it was running."""
        with self._lock():
            if not self.initialised() or not self.running():
                return False
            self._as_service([find_bin_dir() / "pg_ctl", "stop", "-D", self.data.name, "-m", "fast", "-w", "-t", "60"])
            return True

    def status(self) -> dict:
        tcp = self.listening()
        return {"home": str(self.home), "cluster": str(self.root), "initialised": self.initialised(),
                "running": self.running(), "pid": self._pid() if self.running() else None,
                "server_user": self.user, "socket_dir": str(self.run),
                "tcp": f"{tcp[0]}:{tcp[1]} (SCRAM passwords in {self.home / PASSWORD_FILE})" if tcp else "no",
                "url": self.url(), "log": str(self.log)}

    def destroy(self) -> None:
        """Stop the server and delete the cluster's files (tests use it to clean up)."""
        if self.initialised() and self.running():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
