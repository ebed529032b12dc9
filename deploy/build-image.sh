#!/usr/bin/env bash
# Builds the Parley image (deploy/Dockerfile) from the binaries of a build tree.
#
#   deploy/build-image.sh [--engine podman|docker] [--bin DIR] [--tag NAME] [--local-base]
#                         [--extra-packages "redis-server haproxy python3"]
#
#   --bin DIR         where parleyd, parley and parley-hook are (default build/bin)
#   --tag NAME        the image name (default localhost/parley:latest)
#   --local-base      build FROM a bookworm made here by deploy/base-image.sh (no registry needed)
#   --extra-packages  Debian packages the workloads need inside the agents' containers
#
# Prints the image name. Layers are cached by the engine: a rebuild with the same binaries and
# packages takes seconds.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
engine=podman bin="$here/../build/bin" tag=localhost/parley:latest local_base=0 extra=""
while [ $# -gt 0 ]; do
  case "$1" in
    --engine) engine="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --local-base) local_base=1; shift ;;
    --extra-packages) extra="$2"; shift 2 ;;
    *) sed -n '2,13p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
  esac
done

args=()
if [ "$local_base" = 1 ]; then
  base="$("$here/base-image.sh" --engine "$engine")"
  args+=(--build-arg "BASE=$base")
fi
[ -n "$extra" ] && args+=(--build-arg "EXTRA_PACKAGES=$extra")

context="$(mktemp -d "${TMPDIR:-/tmp}/parley-image.XXXXXX")"
trap 'rm -rf "$context"' EXIT
mkdir "$context/bin"
for b in parleyd parley parley-hook; do
  [ -x "$bin/$b" ] || { echo "build-image: no $bin/$b (build it first)" >&2; exit 1; }
  cp "$bin/$b" "$context/bin/"
done
"$engine" build --quiet --network host -f "$here/Dockerfile" -t "$tag" "${args[@]}" "$context" >"$context/build.log" 2>&1 || {
  cat "$context/build.log" >&2
  exit 1
}
echo "$tag"
