#!/usr/bin/env bash
# container_preflight: the ctest fixture that every container test requires (tests/CMakeLists.txt).
# Checks, before they run, that this machine has what they use, and fails naming the Debian package
# of every missing piece at once. tools/setup installs each package named here
# (preflight_failure_test.sh checks that too); a piece that is not a package (root, the kernel,
# podman's own view of its configuration) is named with what podman or the kernel said.
#
# What is checked, and why:
#   podman, conmon, the OCI runtime the tests configure (runc: crun refuses hybrid cgroup
#     hierarchies) and podman actually running it, with CNI networks, on the tests' storage;
#   the CNI plugins podman's bridge networks use, and dnsname with dnsmasq: without them podman
#     makes networks without DNS, silently, and compose/kube play containers cannot resolve each
#     other (the failure of issue 9); a throwaway network shows podman enables DNS;
#   iptables, which the bridge, portmap and firewall plugins run, and that it works in a fresh
#     network namespace (the tests run in one: unshare --net);
#   catatonit, for the pause image of `podman kube play`; podman-compose;
#   what deploy/base-image.sh builds the bookworm base from (debootstrap, which downloads with wget
#     and verifies with gpgv and the archive keyring);
#   what the tests run themselves: ip, pgrep, python3 with yaml, curl, redis-cli, /bin/busybox.
#
# Overrides (preflight_failure_test.sh uses them to make pieces look missing):
#   PATH                       where commands are looked up, as the tests look them up
#   PARLEY_PREFLIGHT_CNI_DIRS  directories searched for CNI plugins (default: podman's defaults)
#   PARLEY_PREFLIGHT_KEYRING   the Debian archive keyring debootstrap verifies with
# `preflight_test.sh --packages` prints every package this script can name, one a line.
source "$(dirname "${BASH_SOURCE[0]}")/podman_env.sh"

cni_dirs="${PARLEY_PREFLIGHT_CNI_DIRS:-/usr/local/libexec/cni /usr/libexec/cni /usr/local/lib/cni /usr/lib/cni /opt/cni/bin}"
keyring="${PARLEY_PREFLIGHT_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}"
# The runtime podman_env.sh configures for the tests.
runtime=$(sed -n 's/^runtime = "\(.*\)"$/\1/p' "$work/containers.conf")
# Plugins of the bridge networks podman 4.3 writes (CNI backend), and the one that gives them DNS.
cni_plugins=(bridge host-local loopback portmap firewall tuning)
dnsname_package=golang-github-containernetworking-plugin-dnsname

# COMMAND|PACKAGE|WHY
commands=(
  "podman|podman|it runs every container of the tests"
  "conmon|conmon|it monitors each container for podman"
  "$runtime|$runtime|it is the OCI runtime the tests configure (tests/deploy/podman_env.sh)"
  "podman-compose|podman-compose|it runs the project of compose_test"
  "iptables|iptables|the CNI bridge, portmap and firewall plugins run it"
  "dnsmasq|dnsmasq-base|the dnsname CNI plugin runs it to serve a network's names"
  "debootstrap|debootstrap|it builds the bookworm base image (deploy/base-image.sh)"
  "wget|wget|debootstrap downloads with it"
  "gpgv|gpgv|debootstrap verifies the archive's Release file with it"
  "ip|iproute2|the tests bring up their network namespaces' loopback with it"
  "pgrep|procps|kube_play_test waits with it for a killed container's conmon to go"
  "python3|python3|the tests read their model files with it"
  "curl|curl|webstack_containers_test reaches the balancer with it"
  "redis-cli|redis-tools|webstack_containers_test reads back from Redis with it"
)

if [ "${1:-}" = --packages ]; then
  for c in "${commands[@]}"; do
    IFS='|' read -r _ package _ <<<"$c"
    echo "$package"
  done
  printf '%s\n' catatonit containernetworking-plugins "$dnsname_package" debian-archive-keyring \
    python3-yaml busybox-static
  rm -rf "$work"
  exit 0
fi

network=""
cleanup() {
  [ -n "$network" ] && podman network rm -f "$network" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

missing=()   # "PACKAGE|WHAT", one a missing piece
problems=()  # pieces that are not a package
lack() { missing+=("$1|$2"); }
have() { command -v "$1" >/dev/null 2>&1; }

for c in "${commands[@]}"; do
  IFS='|' read -r cmd package why <<<"$c"
  have "$cmd" || lack "$package" "no '$cmd' on PATH: $why"
done
if ! have catatonit && [ ! -x /usr/libexec/podman/catatonit ]; then
  lack catatonit "no catatonit (on PATH or /usr/libexec/podman): podman kube play builds its pause image with it"
fi
[ -s "$keyring" ] || lack debian-archive-keyring "no $keyring: debootstrap verifies the bookworm archive with it"
if have python3 && ! python3 -c 'import yaml' 2>/dev/null; then
  lack python3-yaml "$(command -v python3) cannot import yaml: kube_play_test reads the manifests with it"
fi
[ -x /bin/busybox ] || lack busybox-static "no /bin/busybox: container_action_test builds its image from it"

plugin_dir() {
  local d
  for d in $cni_dirs; do
    [ -x "$d/$1" ] && { echo "$d"; return 0; }
  done
  return 1
}
cni_ok=1
for p in "${cni_plugins[@]}"; do
  plugin_dir "$p" >/dev/null || {
    lack containernetworking-plugins "no CNI plugin '$p' in $cni_dirs: podman's bridge networks need it"
    cni_ok=0
  }
done
if ! plugin_dir dnsname >/dev/null; then
  lack "$dnsname_package" "no CNI plugin 'dnsname' in $cni_dirs: without it podman makes networks without DNS and the containers of compose_test and kube_play_test cannot resolve each other's names"
  cni_ok=0
fi

if [ "$(id -u)" -ne 0 ]; then
  problems+=("not root: the container tests run podman as root and unshare --net")
fi

# iptables must work in a network namespace of the tests' kind, not only be installed.
if [ "$(id -u)" -eq 0 ] && have iptables && have unshare; then
  if ! out=$(unshare --net -- iptables -w -t nat -L -n 2>&1 >/dev/null); then
    problems+=("iptables cannot list the nat table in a new network namespace (the CNI plugins need it; kernel without nf_tables?): $out")
  fi
fi

# podman itself, with the tests' containers.conf and storage.
if [ "$(id -u)" -eq 0 ] && have podman; then
  if ! info=$(podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.NetworkBackend}} {{.Store.GraphDriverName}}' 2>&1); then
    problems+=("podman info fails with the tests' configuration ($work/containers.conf): $info")
  else
    read -r used backend driver <<<"$info"
    if [ "$used" != "$runtime" ]; then
      lack "$runtime" "podman runs '$used', not the '$runtime' the tests configure"
    fi
    [ "$backend" = cni ] || problems+=("podman uses the '$backend' network backend, not cni (tests/deploy/podman_env.sh asks for cni)")
    [ "$driver" = overlay ] || problems+=("podman's storage driver is '$driver', not overlay")
    # A network made as the tests make theirs must have DNS: that is what was silently missing.
    if [ "$cni_ok" = 1 ] && have dnsmasq && [ "$backend" = cni ]; then
      # What an earlier run that was killed left (its process is gone).
      for n in $(podman network ls --format '{{.Name}}' | grep '^parley-preflight-[0-9]*$' || true); do
        kill -0 "${n##*-}" 2>/dev/null || podman network rm -f "$n" >/dev/null 2>&1 || true
      done
      network="parley-preflight-$$"
      if ! out=$(podman network create "$network" 2>&1); then
        problems+=("podman network create fails: $out")
      elif [ "$(podman network inspect -f '{{.DNSEnabled}}' "$network" 2>&1)" != true ]; then
        problems+=("podman made network $network without DNS although dnsname is in $(plugin_dir dnsname): is that directory among podman's cni_plugin_dirs?")
      fi
    fi
  fi
  if have podman-compose && ! out=$(podman-compose version 2>&1); then
    problems+=("podman-compose version fails: $out")
  fi
fi

if [ ${#missing[@]} -eq 0 ] && [ ${#problems[@]} -eq 0 ]; then
  echo "container_preflight: OK: podman $(podman --version | awk '{print $3}') with $runtime and CNI networks with DNS (dnsname, dnsmasq), iptables, catatonit, podman-compose, debootstrap and the tests' tools"
  exit 0
fi

packages=()
for m in "${missing[@]}"; do
  package=${m%%|*}
  echo "container_preflight: MISSING (Debian package $package): ${m#*|}" >&2
  [[ " ${packages[*]} " == *" $package "* ]] || packages+=("$package")
done
for p in "${problems[@]}"; do
  echo "container_preflight: PROBLEM: $p" >&2
done
if [ ${#packages[@]} -gt 0 ]; then
  echo "container_preflight: FAIL: the container tests cannot run without ${packages[*]}; run tools/setup, which installs them, or: apt-get install --no-install-recommends ${packages[*]}" >&2
else
  echo "container_preflight: FAIL: see the problems above" >&2
fi
exit 1
