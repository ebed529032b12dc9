#!/usr/bin/env bash
# The webstack example (examples/webstack/model.yaml: redis/0, app/0, app/1, balancer/0) with
# `parley up --runtime podman`: every unit's parleyd, and the daemon it starts, in a container of
# its own on the model's network. The definitions bind and publish PARLEY_UNIT_HOST (the
# container's address), so the model converges across containers: a value PUT through the
# balancer comes back through it and is in Redis (asked at redis/0's address with the password
# the app got over the relation), GET / reaches both app units, and `down --purge` leaves no
# container, volume or network.
#
# The image is the tests' (deploy/build-image.sh --local-base) with the webstack's packages: its
# apt-get layer is built once per package list and cached in the tests' storage, so later runs
# only copy the binaries. Like runtime_test.sh, the test (podman and the CLI alike) runs in a
# network namespace of its own (unshare --net).
source "$(dirname "${BASH_SOURCE[0]}")/podman_env.sh"

image=localhost/parley-webstack:test
if [ "${1:-}" != --inside ]; then
  prepare_storage_and_image "$image" --extra-packages "redis-server haproxy python3"
  unshare --net -- "${BASH_SOURCE[0]}" --inside
  exit $?
fi

# Inside the private network namespace.
ip link set lo up
export PARLEY_MODEL_DIR="$work/model/.parley"
trap runtime_test_finish EXIT
mkdir -p "$work/model"

# The unit's address on the model's network (model.json's "address" without the agent's port).
unit_ip() {
  python3 -c 'import json,sys
s=json.load(open(sys.argv[1]))
a=next(u["address"] for v in s["services"] for u in v["units"] if u["name"]==sys.argv[2])
print(a.rsplit(":", 1)[0])' "$PARLEY_MODEL_DIR/model.json" "$1"
}

started=$SECONDS
parley up "$PARLEY_SOURCE_DIR/examples/webstack/model.yaml" --runtime podman --image "$image" \
  --timeout 300s
parley wait --timeout 180s
log "up and settled in $((SECONDS - started))s"
parley status

redis=$(unit_ip redis/0) app0=$(unit_ip app/0) app1=$(unit_ip app/1) lb=$(unit_ip balancer/0)
log "redis/0 $redis, app/0 $app0, app/1 $app1, balancer/0 $lb"
for ip in "$redis" "$app0" "$app1" "$lb"; do
  [ "$ip" != 127.0.0.1 ] && [ -n "$ip" ] || fail "a unit has no container address: '$ip'"
done
parley status | grep -E "^redis/0 +active .*serving on $redis:16379" || fail "redis/0 does not serve on $redis"
parley status | grep -E "^app/1 +active .*serving on $app1:18101 with redis $redis:16379" ||
  fail "app/1 does not serve on $app1 with redis at $redis"
wait_until 60 "balancer/0 active with 2 backends" \
  sh -c "parley status | grep -E '^balancer/0 +active .*balancing 2 backends on $lb:18080'"

# What the app units got from redis/0 over the relation.
db=$(parley relation-data app/0 db --json)
field() { python3 -c 'import json,sys
d=json.loads(sys.argv[1])
def find(o):
    if isinstance(o, dict):
        if sys.argv[2] in o and not isinstance(o[sys.argv[2]], (dict, list)): return o[sys.argv[2]]
        o = list(o.values())
    if isinstance(o, list):
        for v in o:
            r = find(v)
            if r is not None: return r
    return None
r = find(d)
if r is None: sys.exit("no %s in %s" % (sys.argv[2], sys.argv[1]))
print(r)' "$db" "$1"; }
[ "$(field host)" = "$redis" ] || fail "app/0 got redis host $(field host), not $redis"
password=$(field password)
[ -n "$password" ] || fail "app/0 got no redis password"

# Through the balancer, from outside every container.
base="http://$lb:18080"
value="across containers $RANDOM"
curl -sS -f --max-time 10 -X PUT --data-binary "$value" "$base/kv/x" || fail "PUT through the balancer"
got=$(curl -sS -f --max-time 10 "$base/kv/x") || fail "GET through the balancer"
[ "$got" = "$value" ] || fail "GET /kv/x gave '$got', not '$value'"
stored=$(REDISCLI_AUTH="$password" redis-cli -h "$redis" -p 16379 --no-auth-warning GET x)
[ "$stored" = "$value" ] || fail "redis at $redis has x='$stored', not '$value'"
log "PUT, GET through $base and GET in redis at $redis: '$value'"

both() {
  local seen="" i
  for i in 1 2 3 4 5 6; do seen+="$(curl -sS --max-time 5 "$base/")"$'\n'; done
  grep -qx "Hello from app/0" <<<"$seen" && grep -qx "Hello from app/1" <<<"$seen"
}
wait_until 30 "GET / through the balancer reaches app/0 and app/1" both
log "GET / reaches app/0 and app/1"

down_purge_leaves_nothing
log "PASS in $((SECONDS - started))s after the image"
