#!/usr/bin/env bash
# Builds tresor and runs `tresor serve` on its embedded defaults (SQLite and the local executor
# under ./tresor-data, listening on 127.0.0.1:8000). Extra arguments go to `tresor serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v bwrap >/dev/null 2>&1; then
    echo "==> installing bubblewrap (the task sandbox)"
    as_root=""
    [ "$(id -u)" = 0 ] || as_root="sudo"
    $as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq bubblewrap >/dev/null
fi
exec cargo run --release --locked --bin tresor -- serve "$@"
