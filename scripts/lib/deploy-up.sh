#!/usr/bin/env bash
# What the deployment recipes' tests need: buildah (to build deploy/container/Containerfile)
# and systemd-analyze (to verify deploy/systemd/tresor.service), both from Debian. Idempotent:
# silent and instant when they are there.
set -euo pipefail
pkgs=(buildah systemd)
if ! dpkg -s "${pkgs[@]}" >/dev/null 2>&1; then
    printf '==> installing %s\n' "${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${pkgs[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq "${pkgs[@]}" >/dev/null; }
fi
