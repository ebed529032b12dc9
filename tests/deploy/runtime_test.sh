#!/usr/bin/env bash
# `parley up MODEL --runtime podman`: each unit's parleyd in a container of its own on the model's
# private network, with mutual TLS. The model (cli_test's: web provides http to lb, builtin
# actions only) converges; a unit's container killed and started again resumes from its
# knowledge base (its install does not run again, its run numbers continue, its relation data is
# the same); `down` then `up` restarts every container from its volume; `down --purge` leaves no
# container, volume or network.
#
# The containers' addresses are on a bridge that podman makes in the network namespace it runs
# in: the test (podman and the CLI alike) runs in a namespace of its own (unshare --net), which
# takes the bridge and its rules with it when the test ends.
source "$(dirname "${BASH_SOURCE[0]}")/podman_env.sh"

image=localhost/parley:test
if [ "${1:-}" != --inside ]; then
  prepare_storage_and_image "$image"
  unshare --net -- "${BASH_SOURCE[0]}" --inside
  exit $?
fi

# Inside the private network namespace.
ip link set lo up
export PARLEY_MODEL_DIR="$work/model/.parley"
trap runtime_test_finish EXIT

mkdir -p "$work/model/web/interfaces" "$work/model/lb"
cat >"$work/model/web/service.yaml" <<'YAML'
name: web
provides:
  website: http
peers:
  cluster: web-peers
config:
  port: {type: int, default: 8000}
handlers:
  - name: remember
    on: [install]
    action:
      kind: builtin
      steps:
        - set: "installed=yes"
  - name: publish
    when: [website.joined]
    on: [config.changed, website.joined, start]
    action:
      kind: builtin
      steps:
        - relation-set: {endpoint: website, key: host, value: "127.0.0.1"}
        - relation-set: {endpoint: website, key: port, value: "{{config.port}}"}
        - status: {state: active, message: "on {{config.port}}"}
YAML
echo $'name: web-peers\nrequired: {}' >"$work/model/web/interfaces/web-peers.yaml"
cat >"$work/model/lb/service.yaml" <<'YAML'
name: lb
requires:
  backends: http
handlers:
  - name: wait
    when_not: [backends.ready]
    action:
      kind: builtin
      steps:
        - status: {state: waiting, message: "no backends"}
  - name: ready
    when: [backends.ready]
    action:
      kind: builtin
      steps:
        - status: {state: active, message: "port {{fact.backends.remote.port}}"}
YAML
cat >"$work/model/model.yaml" <<YAML
interfaces: $PARLEY_SOURCE_DIR/examples/interfaces
services:
  web:
    definition: web
    units: 2
    config: {port: 9000}
  lb:
    definition: lb
relations:
  - [web:website, lb:backends]
YAML

# The unit's field in model.json.
unit_field() {
  python3 -c 'import json,sys
s=json.load(open(sys.argv[1]))
print(next(u[sys.argv[3]] for v in s["services"] for u in v["units"] if u["name"]==sys.argv[2]))' \
    "$PARLEY_MODEL_DIR/model.json" "$1" "$2"
}
installs() { parley trace "$1" --last 100 | grep -c "^run [0-9]*: event [0-9]* 'install'" || true; }
last_run() { parley trace "$1" --last 1 | sed -n 's/^run \([0-9]*\):.*/\1/p' | tail -n 1; }
settled_as_before() {
  parley wait --timeout 60s
  parley status | grep -E '^lb/0 +active +- +idle .*port 9000' || { parley status; fail "lb/0 not active on port 9000"; }
  [ "$(parley relation-data lb/0 backends)" = "$data" ] ||
    fail "lb/0's relation data changed: $(parley relation-data lb/0 backends)"
  for u in web/0 web/1; do
    parley facts "$u" | grep -qE '^installed +yes$' || fail "$u lost its facts"
    [ "$(installs "$u")" = 1 ] || fail "$u ran install $(installs "$u") times"
  done
}

started=$SECONDS
parley up "$work/model/model.yaml" --runtime podman --image "$image" --timeout 180s
log "up in $((SECONDS - started))s"
parley status
grep -q '"engine": "podman"' "$PARLEY_MODEL_DIR/model.json" || fail "the runtime is not recorded"
for u in web/0 web/1 lb/0; do
  c=$(unit_field "$u" container)
  [ "$(podman inspect -f '{{.State.Running}}' "$c")" = true ] || fail "$u's container $c is not running"
done
parley relation-data lb/0 backends
data=$(parley relation-data lb/0 backends)
grep -q 'port  *9000' <<<"$data" || fail "lb/0 did not get port 9000"
grep -q "web/1" <<<"$data" || fail "lb/0 does not see web/1"
settled_as_before

# Kill web/1's container and start it again: same address, same knowledge base.
c=$(unit_field web/1 container)
address=$(unit_field web/1 address)
before=$(last_run web/1)
podman kill "$c" >/dev/null
wait_until 30 "$c stopped" test "$(podman inspect -f '{{.State.Running}}' "$c")" = false
podman start "$c" >/dev/null
wait_until 60 "web/1 answers again" parley facts web/1
[ "$(unit_field web/1 address)" = "$address" ] || fail "web/1 moved"
settled_as_before
after=$(last_run web/1)
[ "$after" -gt "$before" ] || fail "web/1's run numbers did not continue ($before, then $after)"
log "web/1 resumed at run $after (last run before the kill: $before)"

# down keeps the volumes; up starts the containers again.
parley down
[ -z "$(podman ps -q --filter label=parley.model)" ] || fail "containers still run after down"
started=$SECONDS
parley up "$work/model/model.yaml" --timeout 120s
log "up again in $((SECONDS - started))s"
settled_as_before

down_purge_leaves_nothing
log "PASS"
