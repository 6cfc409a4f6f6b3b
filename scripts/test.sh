#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (each step is skipped
# when already done), then checks formatting and lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

. scripts/lib/ensure-bubblewrap.sh

# A Python venv with the stock py-tes client and pyjwt (an independent relying party).
venv=.venv
if ! "$venv/bin/python" -c 'import tes, jwt, cryptography, wes_client' >/dev/null 2>&1; then
    say "installing py-tes, pyjwt and wes-service into $venv"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r scripts/requirements-test.txt
fi
export TRESOR_TEST_PYTHON="$PWD/$venv/bin/python"

# A real OpenID provider (npm oidc-provider) for the login tests.
oidc=crates/cli/tests/oidc-provider
if [ ! -d "$oidc/node_modules/oidc-provider" ]; then
    say "installing oidc-provider"
    npm ci --prefix "$oidc" --no-audit --no-fund --loglevel=error
fi

# The workflow engines WES runs (Snakemake and cwltool from PyPI, in a venv every sandbox sees
# under /opt); it exports TRESOR_TEST_ENGINES.
say "installing the workflow engines"
. scripts/lib/engines-up.sh

# Two real OCI registries on loopback (one with logins) and images built here from Debian
# packages, for the image tests; it exports TRESOR_TEST_REGISTRY and friends.
say "starting the OCI registries"
. scripts/lib/registry-up.sh

# buildah and systemd-analyze, for the container image and the systemd unit.
bash scripts/lib/deploy-up.sh

# A real single-node SLURM cluster for the SLURM executor's tests.
say "starting SLURM"
bash scripts/lib/slurm-up.sh

if [ "${CI:-}" = "true" ]; then
    export CARGO_INCREMENTAL=0
fi
export RUST_BACKTRACE="${RUST_BACKTRACE:-0}"

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
say "cargo test"
cargo test --workspace --locked

# The soak's smoke: 50 clients for a minute against a real server, with the debug build the
# tests used. Any error fails it; the latencies are reported, not judged (that is bench/'s job).
say "soak smoke (50 clients, 60 s)"
cargo build --locked -q -p tresor-bench -p tresor-cli
target/debug/tresor-bench --only soak --soak-seconds 60 --soak-clients 50 --tresor target/debug/tresor \
    | grep -E '^\| soak'
# Nothing the benchmark or the tests started may be left running.
left=$(pgrep -fa 'tresor worker' | grep -E 'tresor-(bench|test)-' || true)
if [ -n "$left" ]; then
    echo "workers left running after the tests and the benchmark:" >&2
    echo "$left" >&2
    exit 1
fi
