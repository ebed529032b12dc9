#!/usr/bin/env bash
# Builds a Debian bookworm base image locally, for machines that reach Debian mirrors but no image
# registry (the tests' machines): `debootstrap --variant=minbase`, then `podman import`. The
# Dockerfile starts FROM it when built with --build-arg BASE=<the name printed>.
#
#   deploy/base-image.sh [--engine podman|docker]   prints the image name, e.g.
#                                                   localhost/parley-bookworm:3f2a1c9e0b7d
#
# The root filesystem is built once per recipe and kept as a tarball in $PARLEY_IMAGE_CACHE
# (default /var/tmp/parley-images), named by a hash of this file: debootstrap takes a minute or
# two, a re-run only imports the tarball (seconds), or nothing when the image is there already.
# Needs root and debootstrap (tools/setup installs it).
set -euo pipefail

engine=podman
while [ $# -gt 0 ]; do
  case "$1" in
    --engine) engine="$2"; shift 2 ;;
    *) echo "usage: $0 [--engine podman|docker]" >&2; exit 2 ;;
  esac
done

mirror="${PARLEY_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cache="${PARLEY_IMAGE_CACHE:-/var/tmp/parley-images}"
key="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)"
image="localhost/parley-bookworm:$key"
tarball="$cache/bookworm-minbase-$key.tar"

if "$engine" image exists "$image" 2>/dev/null ||
   { [ "$engine" = docker ] && docker image inspect "$image" >/dev/null 2>&1; }; then
  echo "$image"
  exit 0
fi

mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
  work="$(mktemp -d "$cache/rootfs.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  echo "base-image: debootstrap --variant=minbase bookworm (once; a minute or two)" >&2
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
  }
  # What images need no copy of: apt lists, caches, docs and man pages (apt-get update restores
  # the lists).
  rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin \
    "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/usr/share/doc/"* \
    "$work/rootfs/usr/share/man/"* "$work/rootfs/usr/share/locale/"*
  tar --numeric-owner -C "$work/rootfs" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi
"$engine" import -q --change 'CMD ["bash"]' "$tarball" "$image" >/dev/null
echo "$image"
