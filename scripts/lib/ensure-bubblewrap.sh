# Sourced by the scripts: installs bubblewrap (the task sandbox) and e2fsprogs (mkfs.ext4, for
# each task's size-limited disk) unless they are already on PATH.
if ! command -v bwrap >/dev/null 2>&1 || ! PATH="$PATH:/usr/sbin:/sbin" command -v mkfs.ext4 >/dev/null 2>&1; then
    echo "==> installing bubblewrap and e2fsprogs"
    as_root=""
    [ "$(id -u)" = 0 ] || as_root="sudo"
    $as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq bubblewrap e2fsprogs >/dev/null
fi
