#!/usr/bin/env bash
# One entry point for a fresh Debian/Ubuntu machine with python3 and root or sudo:
#   ./run.sh demo  [xpmet demo options]   installs what is missing, then runs the end-to-end demo
#   ./run.sh test  [pytest options]       installs what is missing, then runs the test suite
#   ./run.sh setup                        only installs (system packages, .venv)
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

have_postgres() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }
have_q3c() { ls /usr/share/postgresql/*/extension/q3c.control >/dev/null 2>&1; }

install_system_packages() {
  if have_postgres && have_q3c && command -v stilts >/dev/null && command -v fitsverify >/dev/null \
     && python3 -c 'import venv, ensurepip' 2>/dev/null; then
    return
  fi
  echo "==> installing PostgreSQL server, q3c, STILTS and fitsverify (apt-get)"
  # xpmet runs its own cluster: do not let the Debian package create and start a system one.
  $SUDO mkdir -p /etc/postgresql-common
  echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq postgresql-common python3-venv >/dev/null
  ver=$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1)
  if [ -z "$ver" ]; then
    ver=$(apt-cache search --names-only '^postgresql-[0-9]+-q3c$' | sed -E 's/^postgresql-([0-9]+)-q3c.*/\1/' | sort -n | tail -1)
  fi
  $SUDO apt-get install -y -qq "postgresql-$ver" "postgresql-$ver-q3c" >/dev/null
  # STILTS: the reference crossmatch the tests and benchmarks compare against.
  $SUDO apt-get install -y -qq --no-install-recommends stilts >/dev/null || printf '\n%s\n%s\n\n' "==> WARNING: STILTS WAS NOT INSTALLED (apt-get install stilts failed)." "==> The tests will SKIP the crossmatch comparison against STILTS (shown in pytest's summary)." >&2
  # fitsverify (HEASARC): checks FITS outputs the way archives do.
  $SUDO apt-get install -y -qq --no-install-recommends fitsverify >/dev/null || echo "warning: fitsverify not installed"
}

install_python_env() {
  local stamp=.venv/.xpmet-installed
  if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then return; fi
  echo "==> creating .venv and installing xpmet"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  if ! command -v nvidia-smi >/dev/null 2>&1 && ! .venv/bin/python -c 'import torch' 2>/dev/null; then
    # No NVIDIA GPU: prefer the CPU build (a plain "torch" pulls a multi-GB CUDA build).
    .venv/bin/pip install -q "torch==2.13.0" || .venv/bin/pip install -q torch
  fi
  .venv/bin/pip install -q -e ".[test]"
  touch "$stamp"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) install_system_packages; install_python_env ;;
  demo)  install_system_packages; install_python_env; exec .venv/bin/xpmet demo "$@" ;;
  test)  install_system_packages; install_python_env; exec .venv/bin/python -m pytest "$@" ;;
  *) echo "usage: ./run.sh demo|test|setup [args]" >&2; exit 2 ;;
esac
