#!/usr/bin/env bash
# The workflow engines tresor's WES runs (Snakemake and cwltool) in a venv of their own,
# /opt/tresor-engines/venv, built with Debian's /usr/bin/python3: an engine task runs in a sandbox
# that sees only /usr, /etc, /opt, /bin and /lib, where a pyenv or /usr/local Python is absent.
# Idempotent: a warm run is one version probe, well under a second. Run as root.
#
# Sourced by scripts/test.sh so that the export below reaches cargo test; the work runs in a child
# bash for the reason registry-up.sh gives (`set -e` is unreliable inside a sourcing shell).
if [ -z "${TRESOR_ENGINES_UP_CHILD:-}" ]; then
    TRESOR_ENGINES_UP_CHILD=1 bash "${BASH_SOURCE[0]}" \
        || { echo "engines-up: failed" >&2; return 1 2>/dev/null || exit 1; }
    export TRESOR_TEST_ENGINES=/opt/tresor-engines/venv
    return 0 2>/dev/null || exit 0
fi

set -euo pipefail
umask 022   # world-readable: the engine runs as the task's user, not root
say() { printf '==> %s\n' "$*"; }
top=/opt/tresor-engines venv=/opt/tresor-engines/venv
# Pinned together: Snakemake 9 finds executor plugins through snakemake-interface-executor-plugins
# 9.x, whose API engines/snakemake_executor_plugin_tresor is written against.
pins=(snakemake==9.27.1 snakemake-interface-executor-plugins==9.4.0 cwltool==3.3.20260925135507)

# installed: every pin is what the venv holds. Reads package metadata only (importing snakemake
# takes seconds), and fails on a missing or half-built venv, which is then built anew.
installed() {
    "$venv/bin/python" - "${pins[@]}" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(any(version(name) != want for name, want in (p.split("==") for p in sys.argv[1:])))
EOF
}
# cwltool's parsed schemas, kept beside it for tresor_cwl.py (see there).
schema_cache() {
    [ -f "$venv/share/tresor/cwl-schemas.pickle" ] && return 0
    "$venv/bin/python" "$(dirname "${BASH_SOURCE[0]}")/../../engines/tresor_cwl.py" --write-schema-cache
}
installed && { schema_cache; exit 0; }

start=$SECONDS
# A venv is not relocatable (its scripts name their interpreter by absolute path), so it is built
# in place; a leftover from an interrupted or older build is removed first.
rm -rf "$venv"
mkdir -p "$top"
chmod 0755 "$top"
# Debian's python3 creates venvs only with python3-venv (it provides ensurepip's wheels).
if ! /usr/bin/python3 -m venv "$venv" >/dev/null 2>&1; then
    say "installing python3-venv"
    rm -rf "$venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq python3 python3-venv >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null; }
    /usr/bin/python3 -m venv "$venv"
fi
say "installing ${pins[*]} into $venv"
"$venv/bin/pip" install -q --disable-pip-version-check --no-input --use-pep517 "${pins[@]}" \
    || { rm -rf "$venv"; exit 1; }
# pip keeps the umask, but a wheel's own modes can be narrower.
chmod -R a+rX "$top"
installed || { echo "engines-up: $venv does not hold ${pins[*]}" >&2; exit 1; }
schema_cache
say "engines in $venv: $("$venv/bin/snakemake" --version | tail -1 | sed 's/^/snakemake /'), \
$("$venv/bin/cwltool" --version 2>/dev/null | sed 's/^.*cwltool /cwltool /') ($((SECONDS - start)) s)"
