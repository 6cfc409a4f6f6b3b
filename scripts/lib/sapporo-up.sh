#!/usr/bin/env bash
# Sapporo 2.4.0, a peer WES server, for tresor-bench's WES rows (not for the tests): a venv at
# /opt/tresor-bench-sapporo. Sapporo needs Python 3.12, which Debian 12 does not ship; this uses
# python3.12 from PATH or a pyenv install, and says so when there is none.
# Idempotent: a warm run is one version probe.
set -euo pipefail
venv=/opt/tresor-bench-sapporo pin=sapporo==2.4.0
if "$venv/bin/python" -c 'import sys; from importlib.metadata import version; sys.exit(version("sapporo") != "2.4.0")' 2>/dev/null; then
    exit 0
fi
python=$(command -v python3.12 2>/dev/null || true)
if [ -z "$python" ] || ! "$python" --version >/dev/null 2>&1; then
    python=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null | tail -1 || true)
fi
if [ -z "$python" ]; then
    echo "sapporo-up: no Python 3.12 here (Sapporo needs it); install one, e.g. with pyenv" >&2
    exit 1
fi
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "$pin" || { rm -rf "$venv"; exit 1; }
echo "==> $pin in $venv ($("$python" --version))"
