#!/usr/bin/env bash
# Makes the local base image that the container test builds the Dockerfile on:
# a minimal Debian bookworm with its python3 (3.11), python3-venv and ca-certificates.
# Needed because CI reaches no container registry (python:3.11-slim cannot be pulled),
# while Debian's package mirror is reachable. Idempotent and cached: the root file
# system's tarball is kept under $BASE_CACHE between runs on the same machine.
#
#   .ci/container_base.sh            # prints the image name once it exists
#
# Settings: BASE_IMAGE (default localhost/melanoma-screen-base:bookworm),
# BASE_CACHE (default /var/cache/melanoma-screen), DEBIAN_MIRROR, PODMAN (the podman
# command with its storage options; benchmarks/container.py passes its own).
set -euo pipefail
BASE_IMAGE=${BASE_IMAGE:-localhost/melanoma-screen-base:bookworm}
BASE_CACHE=${BASE_CACHE:-/var/cache/melanoma-screen}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
read -r -a PODMAN <<<"${PODMAN:-podman --root /var/lib/melanoma-screen/containers --runroot /run/melanoma-screen/containers --storage-driver overlay --cgroup-manager cgroupfs}"
TARBALL="$BASE_CACHE/bookworm-python3.tar"

if "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
    echo "$BASE_IMAGE"
    exit 0
fi
if [ ! -s "$TARBALL" ]; then
    command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
    mkdir -p "$BASE_CACHE"
    rootfs=$(mktemp -d "$BASE_CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    echo "debootstrap bookworm into $rootfs (a few minutes, once per machine)" >&2
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$DEBIAN_MIRROR" >&2
    # apt's lists and caches are not needed to run Python; they only add size.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$TARBALL.partial" .
    mv "$TARBALL.partial" "$TARBALL"
fi
"${PODMAN[@]}" import --change 'CMD ["/bin/bash"]' "$TARBALL" "$BASE_IMAGE" >&2
echo "$BASE_IMAGE"
