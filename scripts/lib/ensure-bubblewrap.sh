# Sourced by the scripts: installs bubblewrap (the task sandbox) unless `bwrap` is already on PATH.
if ! command -v bwrap >/dev/null 2>&1; then
    echo "==> installing bubblewrap"
    as_root=""
    [ "$(id -u)" = 0 ] || as_root="sudo"
    $as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq bubblewrap >/dev/null
fi
