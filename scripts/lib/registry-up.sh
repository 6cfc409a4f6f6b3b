#!/usr/bin/env bash
# Two local OCI registries (Debian's docker-registry = CNCF distribution 2.8) on loopback, plain
# HTTP, and test images built here with umoci + skopeo: nothing comes from the internet but Debian
# packages from the apt mirror. 127.0.0.1:5000 is open, 127.0.0.1:5001 wants htpasswd credentials.
# Idempotent: each step is skipped when done, so a warm run is silent and well under a second.
# Run as root. Adapted from the tested recipe in ../shared/recipes.md (section 7).
#
# Sourced by scripts/test.sh so that the exports below reach cargo test. The work runs in a child
# bash: `set -e` is silently off inside functions called from `if`/`||`, so only a separate
# process keeps it reliable whatever the caller's shell options, and our helpers stay out of it.
if [ -z "${TRESOR_REGISTRY_UP_CHILD:-}" ]; then
    TRESOR_REGISTRY_UP_CHILD=1 bash "${BASH_SOURCE[0]}" \
        || { echo "registry-up: failed" >&2; return 1 2>/dev/null || exit 1; }
    export TRESOR_TEST_REGISTRY=127.0.0.1:5000
    export TRESOR_TEST_REGISTRY_LOG=/var/tmp/tresor-registry/open.log
    # Blobs are at docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data, shared by all repositories.
    export TRESOR_TEST_REGISTRY_DATA=/var/tmp/tresor-registry/open
    export TRESOR_TEST_AUTH_REGISTRY=127.0.0.1:5001
    export TRESOR_TEST_AUTH_USER=tresor-test
    export TRESOR_TEST_AUTH_PASSWORD=registry-pass-8e1f
    export TRESOR_TEST_OCI_LAYOUT=/var/tmp/tresor-registry/build/busybox      # tag 1
    export TRESOR_TEST_OCI_ARCHIVE=/var/tmp/tresor-registry/build/busybox-layout.tar
    export TRESOR_TEST_DEBIAN_LAYOUT=/var/tmp/tresor-registry/build/debian    # tag 12
    return 0 2>/dev/null || exit 0
fi

set -euo pipefail
say() { printf '==> %s\n' "$*"; }
top=/var/tmp/tresor-registry build=/var/tmp/tresor-registry/build
user=tresor-test pass=registry-pass-8e1f
did=""   # set when anything is installed, started, built or pushed: then print a summary

pkgs=(docker-registry skopeo umoci busybox-static apache2-utils debootstrap jq)
if ! dpkg -s "${pkgs[@]}" >/dev/null 2>&1; then
    say "installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${pkgs[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq "${pkgs[@]}" >/dev/null; }
    did=1
fi

# wait_for SECONDS CMD...: poll CMD until it succeeds.
wait_for() {
    local end=$((SECONDS + $1)); shift
    until "$@"; do [ $SECONDS -ge $end ] && return 1; sleep 0.1; done
}
# answers PORT: /v2/ replies as a registry's does (200 open, 401 with auth).
answers() {
    local code
    code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$1/v2/" || true)
    [ "$code" = 200 ] || [ "$code" = 401 ]
}

# start_registry NAME PORT [AUTH-CONFIG]: storage $top/NAME; its stdout+stderr (the access log)
# appended to $top/NAME.log; pid in $top/NAME.pid.
start_registry() {
    local name=$1 port=$2 cfg=$top/$1.yml pid probe
    answers "$port" && return 0
    mkdir -p "$top/$name"
    # accesslog: one Apache "combined" line per request, which tests grep for
    # `GET /v2/<repo>/blobs/sha256:<hex>` to count downloads.
    printf '%s\n' "version: 0.1" "log: {level: info, formatter: text, accesslog: {disabled: false}}" \
        "storage: {filesystem: {rootdirectory: $top/$name}, delete: {enabled: true}}" \
        "http: {addr: 127.0.0.1:$port}" "${3:-}" > "$cfg"
    # setsid: a session of its own, so it outlives the test run (and its Ctrl-C).
    setsid docker-registry serve "$cfg" >> "$top/$name.log" 2>&1 < /dev/null &
    pid=$!
    echo "$pid" > "$top/$name.pid"
    if ! wait_for 10 answers "$port"; then
        echo "registry-up: no registry on 127.0.0.1:$port; $top/$name.log says:" >&2
        tail -5 "$top/$name.log" >&2
        return 1
    fi
    # The tests rely on the access log: check that a request of ours lands in it.
    probe="/v2/?tresor-probe=$pid"
    curl -s -o /dev/null -m 2 "http://127.0.0.1:$port$probe" || true
    wait_for 3 grep -qF "\"GET $probe HTTP/" "$top/$name.log" \
        || { echo "registry-up: no access log in $top/$name.log" >&2; return 1; }
    say "$name registry up on 127.0.0.1:$port (pid $pid, log $top/$name.log)"
    did=1
}
start_registry open 5000
[ -s "$top/htpasswd" ] || { mkdir -p "$top" && htpasswd -Bbn "$user" "$pass" > "$top/htpasswd"; }
start_registry auth 5001 "auth: {htpasswd: {realm: tresor-test, path: $top/htpasswd}}"

# pack NAME TAG POPULATE [umoci config options...]: an OCI layout $build/NAME with one image whose
# root POPULATE fills. Built aside and moved into place when complete, so an interrupted build is
# redone rather than half-used.
pack() {
    local name=$1 tag=$2 populate=$3 tmp=$build/$1.tmp; shift 3
    grep -qF "\"org.opencontainers.image.ref.name\":\"$tag\"" "$build/$name/index.json" 2>/dev/null \
        && return 0
    say "building image $name:$tag"
    rm -rf "$tmp" "$build/$name"
    mkdir -p "$tmp"
    umoci init --layout "$tmp/oci"
    umoci new --image "$tmp/oci:$tag"
    # Not --rootless: that maps every owner to root (e.g. /etc/shadow's group shadow); we are root.
    umoci unpack --image "$tmp/oci:$tag" "$tmp/bundle"
    "$populate" "$tmp/bundle/rootfs"
    umoci repack --image "$tmp/oci:$tag" "$tmp/bundle"
    umoci config --image "$tmp/oci:$tag" "$@"
    umoci gc --layout "$tmp/oci"   # drop the intermediate configs and manifests
    mv "$tmp/oci" "$build/$name"
    rm -rf "$tmp"
    did=1
}
busybox_root() {
    install -d -m 0755 "$1/bin" "$1/etc" "$1/work"
    install -d -m 1777 "$1/tmp"
    cp /bin/busybox "$1/bin/busybox"   # busybox-static's: the image has no libc
    for a in sh ls cat env echo id true false sleep pwd test printf sed grep wc mkdir touch whoami; do
        ln -s busybox "$1/bin/$a"
    done
    printf '%s\n' root:x:0:0:root:/root:/bin/sh nobody:x:65534:65534:nobody:/nonexistent:/bin/false \
        > "$1/etc/passwd"
    printf '%s\n' root:x:0: nogroup:x:65534: > "$1/etc/group"
}
debian_root() {
    # The mirror apt uses here (deb822 or one-line sources), as the internet may be closed.
    local mirror
    mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -1 || true)
    debootstrap --variant=minbase bookworm "$1" "${mirror:-http://deb.debian.org/debian}" \
        > "$build/debootstrap.log" 2>&1 || { tail -20 "$build/debootstrap.log" >&2; return 1; }
    # Smaller; and no device nodes, which an unprivileged unpacker could not create.
    rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/apt/*.bin "$1"/var/lib/apt/lists/* "$1"/dev/*
}
mkdir -p "$build"
pack busybox 1 busybox_root --config.env PATH=/bin:/usr/bin --config.env GREETING=from-image \
    --config.workingdir /work --config.cmd sh
pack debian 12 debian_root \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --config.cmd bash
if [ "$build/busybox/index.json" -nt "$build/busybox-layout.tar" ]; then   # also when it is missing
    tar -C "$build/busybox" -cf "$build/busybox-layout.tar.tmp" .
    mv "$build/busybox-layout.tar.tmp" "$build/busybox-layout.tar"
fi

# push LAYOUT:TAG PORT REPO:TAG [CREDS], unless the tag already names this very manifest (a rebuilt
# layout has new digests, so a tags/list check would keep a stale image). From an oci: source the
# manifest stays OCI, which distribution serves only if the Accept header lists the OCI type.
push() {
    local repo=${3%:*} tag=${3##*:} creds=${4:-} want have
    want=$(jq -r --arg t "${1#*:}" '.manifests[]
        | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$build/${1%:*}/index.json")
    have=$(curl -sI -m 5 ${creds:+-u "$creds"} -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "http://127.0.0.1:$2/v2/$repo/manifests/$tag" || true)
    grep -qi "^docker-content-digest: $want" <<< "$have" && return 0
    say "pushing $3 to 127.0.0.1:$2"
    skopeo copy -q --dest-tls-verify=false ${creds:+--dest-creds "$creds"} "oci:$build/$1" \
        "docker://127.0.0.1:$2/$repo:$tag"
    did=1
}
push busybox:1 5000 lab/busybox:1
push debian:12 5000 lab/debian:12
push busybox:1 5000 mirror/library/alpine:latest
push busybox:1 5000 mirror/library/alpine:3.20
push debian:12 5000 mirror/library/ubuntu:latest
push busybox:1 5001 private/busybox:1 "$user:$pass"

# Tests corrupt blobs in the storage to check digest verification, and a blob is shared by every
# repository: put back any that differ from the layouts' copies, or one test poisons later runs.
for blob in "$build"/{busybox,debian}/blobs/sha256/*; do
    for store in open auth; do
        hex=${blob##*/}
        data=$top/$store/docker/registry/v2/blobs/sha256/${hex:0:2}/$hex/data
        if [ -f "$data" ] && ! cmp -s "$blob" "$data"; then
            say "restoring corrupted blob sha256:$hex in $top/$store"
            cp "$blob" "$data"
        fi
    done
done

if [ -n "$did" ]; then
    for img in lab/busybox:1 lab/debian:12; do
        ref=docker://127.0.0.1:5000/$img
        layers=$(skopeo inspect --tls-verify=false --raw "$ref" \
            | jq -r '[.layers[].size] | "\(length) layer(s), \(add) bytes compressed"')
        say "$img: $(skopeo inspect --tls-verify=false --format '{{.Digest}}' "$ref"), $layers"
    done
fi
