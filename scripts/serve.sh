#!/usr/bin/env bash
# Builds tresor and runs `tresor serve` on its embedded defaults (SQLite and the local executor
# under ./tresor-data, listening on 127.0.0.1:8000). Extra arguments go to `tresor serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/ensure-bubblewrap.sh
exec cargo run --release --locked --bin tresor -- serve "$@"
