#!/usr/bin/env bash
# `parley export compose` run by the real podman-compose: one container per unit running `parley
# host-unit`, units finding each other by service name on the project's network; the model
# converges (the listeners hear the greeter and know each other), and a unit's container killed and
# started again resumes from its volume (its install does not run again, its facts are there).
# Everything runs in a network namespace of its own (unshare --net).
source "$(dirname "${BASH_SOURCE[0]}")/podman_env.sh"

project=parleycompose
if [ "${1:-}" != --inside ]; then
  command -v podman-compose >/dev/null || fail "podman-compose is missing: run tools/setup"
  image=localhost/parley:test
  prepare_storage_and_image "$image"
  parley export compose "$PARLEY_SOURCE_DIR/tests/deploy/model/model.yaml" --image "$image" \
    -o "$work/project"
  unshare --net -- "${BASH_SOURCE[0]}" --inside
  exit $?
fi

ip link set lo up
compose() { podman-compose -p "$project" -f "$work/project/compose.yaml" "$@"; }
finish() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    for c in $(podman ps -a --format '{{.Names}}'); do
      echo "--- podman logs $c (last 20 lines)" >&2
      podman logs "$c" 2>&1 | tail -n 20 >&2
    done
  fi
  compose down -v >/dev/null 2>&1 || true
  podman_clean
  podman network rm -f "${project}_default" >/dev/null 2>&1 || true
  return $rc
}
trap finish EXIT

started=$SECONDS
compose up -d >"$work/compose.log" 2>&1 || { cat "$work/compose.log"; fail "podman-compose up"; }
units=(greeter-0 listener-0 listener-1)
container() { echo "${project}_$1_1"; }
ip_of() { podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(container "$1")"; }
wait_until 60 "every container has an address" bash -c \
  "for u in ${units[*]}; do [ -n \"\$(podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' ${project}_\${u}_1)\" ] || exit 1; done"
: >"$work/addresses"
for u in "${units[@]}"; do echo "$u $(ip_of "$u")" >>"$work/addresses"; done

all_ready() {
  local unit ip
  while read -r unit ip; do
    parley probe --ready --plan "$work/project/plan/model.json" --address "$ip:7000" || return 1
  done <"$work/addresses"
}
wait_until 180 "every unit ready (parley probe --ready)" all_ready
log "converged in $((SECONDS - started))s"

# The plan is a model directory; from this namespace the units are reached by address.
mkdir -p "$work/model"
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
ips = dict(line.split() for line in open(work + "/addresses"))
plan = json.load(open(work + "/project/plan/model.json"))
for s in plan["services"]:
    for u in s["units"]:
        u["address"] = ips[u["name"].replace("/", "-")] + ":7000"
json.dump(plan, open(work + "/model/model.json", "w"))
PY
export PARLEY_MODEL_DIR="$work/model"
parley wait --timeout 60s
for u in listener/0 listener/1; do
  parley facts "$u" | grep -qE '^heard +hello$' || { parley facts "$u"; fail "$u did not hear the greeter"; }
done
parley relation-data listener/0 roster | grep -q listener/1 || fail "listener/0 does not know listener/1"

c=$(container listener-1)
podman kill "$c" >/dev/null
wait_until 30 "$c stopped" test "$(podman inspect -f '{{.State.Running}}' "$c")" = false
podman start "$c" >/dev/null
wait_until 60 "listener-1 ready again" parley probe --ready --plan "$work/project/plan/model.json" \
  --address "$(ip_of listener-1):7000"
# The address may have changed with the restart: record it again.
python3 - "$work" "$(ip_of listener-1)" <<'PY'
import json, sys
work, ip = sys.argv[1], sys.argv[2]
path = work + "/model/model.json"
plan = json.load(open(path))
for s in plan["services"]:
    for u in s["units"]:
        if u["name"] == "listener/1":
            u["address"] = ip + ":7000"
json.dump(plan, open(path, "w"))
PY
parley wait --timeout 60s
[ "$(podman exec "$c" cat /var/lib/parley/units/listener-1/installed)" = installed ] ||
  fail "listener/1 ran install again after the restart: $(podman exec "$c" cat /var/lib/parley/units/listener-1/installed)"
parley facts listener/1 | grep -qE '^heard +hello$' || fail "listener/1 lost its facts"
log "PASS"
