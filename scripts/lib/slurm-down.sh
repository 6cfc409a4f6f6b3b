#!/usr/bin/env bash
# Stops what slurm-up.sh started, in reverse order, each by its pid file (slurmctld takes ~5 s).
for f in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid /run/munge/munged.pid; do
    [ -s "$f" ] || continue
    p=$(cat "$f")
    kill "$p" 2>/dev/null || { rm -f "$f"; continue; }
    for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && { echo "$f: $p did not stop; SIGKILL" >&2; kill -9 "$p"; }
    rm -f "$f"
done
