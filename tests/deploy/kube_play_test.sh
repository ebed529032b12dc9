#!/usr/bin/env bash
# `parley export kubernetes` manifests, run by `podman kube play`: the agents find each other by
# their DNS names (<pod>.<service>), host their units from the ConfigMaps, converge; a unit's
# container killed and started again resumes from its knowledge base (its install does not run
# again, its facts are there).
#
# podman 4.3 plays Pods, not StatefulSets, and has no cluster DNS: tests/deploy/kube_to_pods.py
# does what the StatefulSet controller and the cluster DNS would. Everything runs in a network
# namespace of its own (unshare --net): the pods' network, its bridge and rules vanish with it.
source "$(dirname "${BASH_SOURCE[0]}")/podman_env.sh"

if [ "${1:-}" != --inside ]; then
  image=localhost/parley:test
  prepare_storage_and_image "$image"
  parley export kubernetes "$PARLEY_SOURCE_DIR/tests/deploy/model/model.yaml" --image "$image" \
    -o "$work/manifests.yaml"
  python3 "$PARLEY_SOURCE_DIR/tests/deploy/kube_to_pods.py" "$work/manifests.yaml" 10.90.0 \
    "$work/pods.yaml" "$work/addresses"
  unshare --net -- "${BASH_SOURCE[0]}" --inside
  exit $?
fi

# Inside the private network namespace.
ip link set lo up
finish() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    for c in $(podman ps -a --format '{{.Names}}' | grep -- '-agent$'); do
      echo "--- podman logs $c (last 20 lines)" >&2
      podman logs "$c" 2>&1 | grep -v 'level=error' | tail -n 20 >&2
    done
  fi
  podman kube down "$work/pods.yaml" >/dev/null 2>&1 || true
  podman_clean
  podman network rm -f parley-kube-test >/dev/null 2>&1 || true
  return $rc
}
trap finish EXIT
# A run killed before its trap ran (SIGKILL, a timeout) leaves the network behind.
podman network rm -f parley-kube-test >/dev/null 2>&1 || true
podman network create --subnet 10.90.0.0/24 parley-kube-test >/dev/null
ips=()
while read -r _ ip; do ips+=(--ip "$ip"); done <"$work/addresses"
# The plan (what the pods' readiness probes check against) and, with the pods' addresses, a
# model directory the CLI can read.
mkdir -p "$work/model"
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
ips = dict(line.split() for line in open(work + "/addresses"))
docs = open(work + "/manifests.yaml").read()
import yaml
plan = next(json.loads(d["data"]["model.json"]) for d in yaml.safe_load_all(docs)
            if d and d["kind"] == "ConfigMap" and "model.json" in d.get("data", {}))
json.dump(plan, open(work + "/plan.json", "w"))
for s in plan["services"]:
    for u in s["units"]:
        u["address"] = ips[u["name"].replace("/", "-")] + ":7000"
json.dump(plan, open(work + "/model/model.json", "w"))
PY
started=$SECONDS
podman kube play --network parley-kube-test "${ips[@]}" "$work/pods.yaml" >"$work/play.log" 2>&1 ||
  { cat "$work/play.log"; fail "podman kube play"; }

all_ready() {
  local pod ip
  while read -r pod ip; do parley probe --ready --plan "$work/plan.json" --address "$ip:7000" || return 1; done <"$work/addresses"
}
wait_until 120 "every pod ready (parley probe --ready)" all_ready
log "converged in $((SECONDS - started))s"

export PARLEY_MODEL_DIR="$work/model"
parley wait --timeout 60s
for u in listener/0 listener/1; do
  parley facts "$u" | grep -qE '^heard +hello$' || { parley facts "$u"; fail "$u did not hear the greeter"; }
done
parley relation-data listener/0 roster | grep -q listener/1 || fail "listener/0 does not know listener/1"

# Kill a unit's container and start its pod again: same knowledge base, install not run again.
# kube play's pods have exit policy "stop": once the agent is gone, podman stops the pod's infra
# container too, taking the pod's network down, from the agent's cleanup process (started by its
# conmon), some time after the agent stopped. A container started while that is pending joins a
# network about to vanish (seen in CI: "Network is unreachable" for good). So the pod is started
# again only when nothing of the killed agent runs any more (no conmon, no cleanup process) and the
# pod has stopped as a whole (stopped here if podman's exit policy did not).
id=$(podman inspect -f '{{.Id}}' listener-1-agent)
podman kill listener-1-agent >/dev/null
agent_gone() {
  [ "$(podman inspect -f '{{.State.Status}}' listener-1-agent)" = exited ] && ! pgrep -f "$id" >/dev/null
}
wait_until 30 "listener-1-agent exited and cleaned up" agent_gone
podman pod stop -t 0 listener-1 >/dev/null
pod_exited() {
  local state
  state=$(podman pod inspect -f '{{.State}} {{range .Containers}}{{.Name}}={{.State}} {{end}}' listener-1)
  echo "pod listener-1: $state"
  [ "${state%% *}" = Exited ]
}
wait_until 30 "pod listener-1 stopped" pod_exited
podman pod start listener-1 >/dev/null
wait_until 60 "listener-1 ready again" parley probe --ready --plan "$work/plan.json" --address "$(awk '$1=="listener-1"{print $2}' "$work/addresses"):7000"
parley wait --timeout 60s
[ "$(podman exec listener-1-agent cat /var/lib/parley/units/listener-1/installed)" = installed ] ||
  fail "listener/1 ran install again after the restart: $(podman exec listener-1-agent cat /var/lib/parley/units/listener-1/installed)"
parley facts listener/1 | grep -qE '^heard +hello$' || fail "listener/1 lost its facts"
log "PASS"
