# Sourced by the deploy tests: podman as it works on the test machines, and the shared helpers.
#
# podman runs with runc (crun refuses hybrid cgroup hierarchies), cgroupfs and a file event log (no
# systemd in a test machine), CNI networks and no default ulimits (the sandbox does not allow raising them). Its
# storage is the tests' own, under $PARLEY_IMAGE_CACHE (default /var/tmp/parley-images), kept
# between runs so that the image layers (the bookworm base, the apt-get of the runtime packages)
# are built once: the first run takes a few minutes, later ones seconds. The deploy tests share
# this storage and must not run at once (ctest RESOURCE_LOCK podman_storage); each removes every
# container, pod and volume in it before it starts and when it ends.
set -euo pipefail

: "${PARLEY_BIN_DIR:?the directory of parley, parleyd and parley-hook}"
: "${PARLEY_SOURCE_DIR:?the source tree}"
cache="${PARLEY_IMAGE_CACHE:-/var/tmp/parley-images}"
# The run's files; a test re-entering itself (in a new network namespace) passes it on.
work="${PARLEY_TEST_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/parley-deploy-test.XXXXXX")}"
export PARLEY_TEST_WORK="$work"
mkdir -p "$cache/storage" "$cache/run"
# CNI, not netavark: the networks' names resolve through the dnsname plugin, which is what
# tools/setup installs and preflight_test.sh checks (podman would pick netavark on a machine that
# has it and storage that has no CNI networks yet).
cat >"$work/containers.conf" <<'CONF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "cni"
CONF
cat >"$work/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$cache/storage"
runroot = "$cache/run"
CONF
export CONTAINERS_CONF="$work/containers.conf" CONTAINERS_STORAGE_CONF="$work/storage.conf"
export PATH="$PARLEY_BIN_DIR:$PATH"

log() { echo "[$(date +%T)] $*" >&2; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# Removes what a run leaves in the tests' storage (a crashed earlier run included).
podman_clean() {
  podman pod rm -af -t 0 >/dev/null 2>&1 || true
  podman rm -af -t 0 >/dev/null 2>&1 || true
  podman volume rm -af >/dev/null 2>&1 || true
}

# wait_until SECONDS DESCRIPTION COMMAND...: runs COMMAND every half second until it succeeds.
wait_until() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { "$@" || true; fail "$what: not within ${limit}s"; }
    sleep 0.5
  done
}

# The image, built from this tree's binaries on a local bookworm (deploy/build-image.sh).
build_test_image() {
  local started=$SECONDS
  "$PARLEY_SOURCE_DIR/deploy/build-image.sh" --local-base --bin "$PARLEY_BIN_DIR" --tag "$@"
  log "image built in $((SECONDS - started))s"
}

# Outside a test's network namespace: clean storage (cleaned again, with the run's files, when the
# test ends) and the image built from this tree's binaries (build_test_image's arguments).
prepare_storage_and_image() {
  podman_clean
  trap 'podman_clean; rm -rf "$work"' EXIT
  build_test_image "$@" >/dev/null
}

# `parley down --purge` of the model in $PARLEY_MODEL_DIR, which must leave no container, volume,
# network or model directory behind.
down_purge_leaves_nothing() {
  local prefix
  prefix=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["runtime"]["prefix"])' "$PARLEY_MODEL_DIR/model.json")
  parley down --purge
  [ -z "$(podman ps -aq --filter label=parley.model="$prefix")" ] || fail "containers left after down --purge"
  ! podman volume ls --format '{{.Name}}' | grep -q "^$prefix" || fail "volumes left after down --purge"
  ! podman network ls --format '{{.Name}}' | grep -q "^$prefix" || fail "the network is left after down --purge"
  [ ! -e "$PARLEY_MODEL_DIR" ] || fail "the model directory is left after down --purge"
}

# The EXIT trap of a test that ran a model with `parley up --runtime`: on failure, the containers'
# last log lines and the model's status; then every container, volume and model network goes.
runtime_test_finish() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    for c in $(podman ps -a --format '{{.Names}}' | grep '^parley-'); do
      echo "--- podman logs $c (last 20 lines)" >&2
      podman logs "$c" 2>&1 | tail -n 20 >&2
    done
    parley status >&2 || true
  fi
  podman_clean
  for n in $(podman network ls --format '{{.Name}}' | grep '^parley-[0-9a-f]\{8\}$'); do
    podman network rm -f "$n" >/dev/null 2>&1 || true
  done
  return $rc
}
