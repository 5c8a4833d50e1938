"""The embedded cluster as root and over TCP: service-account checks, no symbolic links followed,
quoted configuration, and SCRAM password access on a loopback port.

The TCP test runs its own throw-away cluster (own XPMET_HOME, under a path with a quote, a comma
and spaces in it) through the real CLI, and destroys it at the end.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from xpmet.db import cluster as cl
from xpmet.errors import XpmetError

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the service account is used only as root")


# -- the service account --------------------------------------------------------------------------
def _account(name):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pytest.skip(f"no account {name!r} on this machine")


def test_only_system_accounts_without_a_login_shell_are_reused():
    daemon = _account("daemon")  # Debian: uid 1, /usr/sbin/nologin
    if Path(daemon.pw_shell).name in cl.NOLOGIN_SHELLS:
        cl.check_service_account(daemon, uid_max=999)
    with pytest.raises(XpmetError, match="it is root"):
        cl.check_service_account(_account("root"), uid_max=999)
    with pytest.raises(XpmetError, match="above SYS_UID_MAX"):
        cl.check_service_account(_account("nobody"), uid_max=999)  # uid 65534: shared by daemons
    sync = _account("sync")  # Debian: a system uid whose shell is /bin/sync, not a no-login shell
    if sync.pw_uid <= 999 and Path(sync.pw_shell).name not in cl.NOLOGIN_SHELLS:
        with pytest.raises(XpmetError, match="allows logins"):
            cl.check_service_account(sync, uid_max=999)
    person = pwd.struct_passwd(("alice", "x", 1000, 1000, "", "/home/alice", "/bin/bash"))
    with pytest.raises(XpmetError, match="XPMET_SERVICE_USER"):
        cl.check_service_account(person, uid_max=999)
    system_bash = pwd.struct_passwd(("xpmet", "x", 998, 998, "", "/nonexistent", "/bin/bash"))
    with pytest.raises(XpmetError, match="/bin/bash allows logins"):
        cl.check_service_account(system_bash, uid_max=999)
    cl.check_service_account(pwd.struct_passwd(("xpmet", "x", 998, 998, "", "/nonexistent", "/bin/false")),
                             uid_max=999)


def test_sys_uid_max_from_login_defs(tmp_path):
    f = tmp_path / "login.defs"
    f.write_text("# SYS_UID_MAX 5\nUID_MIN 1000\nSYS_UID_MAX\t\t499\n")
    assert cl.sys_uid_max(str(f)) == 499
    f.write_text("#SYS_UID_MAX 999\n")
    assert cl.sys_uid_max(str(f)) == 999
    assert cl.sys_uid_max(str(tmp_path / "missing")) == 999


@ROOT_ONLY
def test_the_service_account_in_use_passes_the_check(xpmet_home):
    # the session's cluster runs as it: created by xpmet as a system account with nologin
    c = cl.Cluster(xpmet_home)
    pw = pwd.getpwuid(c.uid)
    assert pw.pw_name == cl.SERVICE_USER and pw.pw_uid <= cl.sys_uid_max()
    assert Path(pw.pw_shell).name in cl.NOLOGIN_SHELLS


# -- symbolic links -------------------------------------------------------------------------------
@pytest.fixture
def open_home():
    """An XPMET_HOME the service user can traverse, so the cluster root is HOME/cluster (not relocated)."""
    home = Path(tempfile.mkdtemp(prefix="xpmet-links-", dir="/tmp"))
    home.chmod(0o755)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("entry", ["run", ".lock", "data", "server.log"])
def test_links_in_the_cluster_root_are_refused_and_not_followed(open_home, entry):
    victim = open_home / "victim"
    victim.mkdir(mode=0o755)
    (victim / "file").write_text("x")
    before = victim.stat(), (victim / "file").stat()
    c = cl.Cluster(open_home)
    assert c.root == open_home / "cluster"
    c.root.mkdir(mode=0o700)
    (c.root / entry).symlink_to(victim if entry in ("run", "data") else victim / "file")
    with pytest.raises(XpmetError, match="symbolic link"):
        c.start()
    after = victim.stat(), (victim / "file").stat()
    for b, a in zip(before, after):
        assert (b.st_uid, b.st_gid, stat.S_IMODE(b.st_mode)) == (a.st_uid, a.st_gid, stat.S_IMODE(a.st_mode))
    assert (victim / "file").read_text() == "x"


def test_a_cluster_root_that_is_a_link_is_refused(open_home):
    victim = open_home / "victim"
    victim.mkdir(mode=0o755)
    (open_home / "cluster").symlink_to(victim)
    with pytest.raises(XpmetError, match="symbolic link"):
        cl.Cluster(open_home).start()
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755 and victim.stat().st_uid == os.geteuid()
    with pytest.raises(XpmetError, match="symbolic link"):
        cl._fix_dir(open_home / "cluster", None, None, 0o700)


def test_a_home_with_a_comma_is_refused(open_home):
    home = open_home / "a,b"
    home.mkdir()
    with pytest.raises(XpmetError, match="comma"):
        cl.Cluster(home).start()
    assert not (home / "cluster").exists()


def test_conf_strings_are_quoted():
    assert cl.conf_string("/a/it's") == "'/a/it''s'"
    assert cl.conf_string("a\\b") == "'a\\\\b'"
    assert cl.conf_directory_list('/x/a,b "c"') == "'\"/x/a,b \"\"c\"\"\"'"
    with pytest.raises(XpmetError, match="line break"):
        cl.conf_string("/a\nlisten_addresses = '*'")


def test_listen_parsing():
    assert cl.parse_listen("127.0.0.1:5433") == ("127.0.0.1", 5433)
    assert cl.parse_listen("[::1]:5433") == ("::1", 5433)
    assert cl.parse_listen("*:5433") == ("*", 5433)
    assert cl.parse_listen("db.example.org:6000") == ("db.example.org", 6000)
    for bad in ("5433", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "a b:1", "x';touch /tmp/p;':1", "[nope]:1"):
        with pytest.raises(XpmetError, match="--listen"):
            cl.parse_listen(bad)


# -- TCP with SCRAM passwords ---------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _xpmet(home, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("XPMET_DATABASE_URL", "XPMET_READER_PASSWORD")}
    env["XPMET_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "xpmet", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


def _refused(url):
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(url, connect_timeout=10).close()
    return str(e.value)


def test_tcp_listener_with_scram_passwords(monkeypatch):
    # A path that needs quoting in postgresql.conf (and in unix_socket_directories).
    home = Path(tempfile.mkdtemp(prefix="xpmet it's \"odd\" ", dir="/tmp"))
    home.chmod(0o755)
    port = _free_port()
    try:
        r = _xpmet(home, "db", "start", "--listen", f"127.0.0.1:{port}")
        assert r.returncode == 0, r.stderr
        assert f"TCP: postgresql://xpmet@127.0.0.1:{port}/xpmet" in r.stdout
        pw_file = home / "db-passwords.json"
        st = pw_file.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
        passwords = json.loads(pw_file.read_text())
        assert set(passwords) == {"xpmet", "xpmet_reader"} and all(len(p) >= 32 for p in passwords.values())

        url = _xpmet(home, "db", "url", "--tcp").stdout.strip()
        reader = _xpmet(home, "db", "url", "--tcp", "--read-only").stdout.strip()
        assert url.startswith(f"postgresql://xpmet:{passwords['xpmet']}@127.0.0.1:{port}/")
        with psycopg.connect(url, connect_timeout=10) as c:
            assert c.execute("SELECT current_user, inet_server_port()").fetchone() == ("xpmet", port)
            # stored as a SCRAM verifier, never the password itself
            verifier = c.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'xpmet'").fetchone()[0]
            assert verifier.startswith("SCRAM-SHA-256$") and passwords["xpmet"] not in verifier
        with psycopg.connect(reader, connect_timeout=10) as c:
            assert c.execute("SELECT current_user").fetchone()[0] == "xpmet_reader"
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT count(*) FROM xpmet.etl_load")

        assert "password authentication failed" in _refused(
            f"postgresql://xpmet:wrong@127.0.0.1:{port}/xpmet")
        assert "password authentication failed" in _refused(
            f"postgresql://xpmet_reader:{passwords['xpmet']}@127.0.0.1:{port}/xpmet")
        no_pw = _refused(f"postgresql://xpmet@127.0.0.1:{port}/xpmet?password=")
        assert "password" in no_pw

        # --where's reader login over TCP takes the reader's password from the file, or the environment
        from xpmet.db.readonly import reader_connect
        monkeypatch.setenv("XPMET_HOME", str(home))
        with reader_connect(url) as c:
            assert c.execute("SELECT current_user").fetchone()[0] == "xpmet_reader"
        monkeypatch.setenv("XPMET_READER_PASSWORD", "wrong")
        with pytest.raises(XpmetError, match="Cannot log in as xpmet_reader.*XPMET_READER_PASSWORD") as e:
            reader_connect(url)
        assert "\n" not in str(e.value)
        monkeypatch.undo()

        status = _xpmet(home, "db", "status").stdout
        assert f"127.0.0.1:{port}" in status
        # Already running without the listener asked for: a clear refusal, not a silent restart.
        r = _xpmet(home, "db", "start", "--listen", f"127.0.0.1:{_free_port()}")
        assert r.returncode == 1 and r.stderr.startswith("error: The embedded server is running on 127.0.0.1")

        # Unix socket only by default: after a plain restart the port is closed.
        assert _xpmet(home, "db", "stop").returncode == 0
        r = _xpmet(home, "db", "start")
        assert r.returncode == 0, r.stderr
        assert "connect" in _refused(f"postgresql://xpmet:{passwords['xpmet']}@127.0.0.1:{port}/xpmet")
        r = _xpmet(home, "db", "url", "--tcp")
        assert r.returncode == 1 and "does not listen on TCP" in r.stderr and "Traceback" not in r.stderr
        socket_url = _xpmet(home, "db", "url").stdout.strip()
        with psycopg.connect(socket_url) as c:
            assert c.execute("SELECT inet_server_port()").fetchone()[0] is None  # a Unix socket

        # The password file must stay private: refused before the server opens its port.
        pw_file.chmod(0o644)
        assert _xpmet(home, "db", "stop").returncode == 0
        r = _xpmet(home, "db", "start", "--listen", f"127.0.0.1:{port}")
        assert r.returncode == 1 and "chmod 600" in r.stderr and "Traceback" not in r.stderr
        assert not cl.Cluster(home).running()
    finally:
        try:
            cl.Cluster(home).destroy()
        finally:
            shutil.rmtree(home, ignore_errors=True)
