#!/usr/bin/env bash
# container_preflight_failure_test: preflight_test.sh on this machine with some pieces made to look
# missing (a PATH without runc, dnsmasq, podman-compose and wget; CNI plugin directories without
# dnsname; no archive keyring) fails, and names every missing piece's Debian package at once, and
# only those. Also: every package the preflight can name is one tools/setup installs.
set -euo pipefail

: "${PARLEY_SOURCE_DIR:?the source tree}"
preflight="$PARLEY_SOURCE_DIR/tests/deploy/preflight_test.sh"
work="$(mktemp -d "${TMPDIR:-/tmp}/parley-preflight-failure.XXXXXX")"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# The packages tools/setup installs: the words of its packages=( ... ) list, comments left out.
setup_packages=$(sed -n '/^packages=(/,/^)/p' "$PARLEY_SOURCE_DIR/tools/setup" | sed 's/#.*//; s/packages=(//; s/)//' | tr -s ' \n' '\n')
named=$(bash "$preflight" --packages)
[ -n "$named" ] || fail "preflight_test.sh --packages named nothing"
for p in $named; do
  grep -qx -- "$p" <<<"$setup_packages" || fail "the preflight names $p, which tools/setup does not install"
done

# farm DIR HIDDEN...: DIR holds a link to every command on PATH (the first of each name, as PATH
# finds it) except the HIDDEN ones.
farm() {
  local dir=$1 d f name
  shift
  declare -A skip=()
  for name in "$@"; do skip[$name]=1; done
  local -a links=()
  mkdir -p "$dir"
  IFS=: read -ra dirs <<<"$PATH"
  for d in "${dirs[@]}"; do
    for f in "$d"/*; do
      name=${f##*/}
      [ -x "$f" ] && [ -z "${skip[$name]:-}" ] || continue
      skip[$name]=1
      links+=("$f")
    done
  done
  ln -s "${links[@]}" "$dir/"
}

# CNI plugin directory with every plugin of podman's default directories but dnsname.
mkdir "$work/cni"
for d in /usr/local/libexec/cni /usr/libexec/cni /usr/local/lib/cni /usr/lib/cni /opt/cni/bin; do
  for f in "$d"/*; do
    [ -x "$f" ] && [ "${f##*/}" != dnsname ] && [ ! -e "$work/cni/${f##*/}" ] && ln -s "$f" "$work/cni/"
  done
done

# With nothing hidden, the link farm alone passes: what fails below fails for what is hidden.
farm "$work/all"
PATH="$work/all" bash "$preflight" >"$work/all.log" 2>&1 || { cat "$work/all.log"; fail "the preflight fails with the full PATH farm"; }

farm "$work/path" runc dnsmasq podman-compose wget
rc=0
PATH="$work/path" PARLEY_PREFLIGHT_CNI_DIRS="$work/cni" PARLEY_PREFLIGHT_KEYRING="$work/no-keyring.gpg" \
  bash "$preflight" >"$work/out.log" 2>&1 || rc=$?
cat "$work/out.log"
[ "$rc" = 1 ] || fail "the preflight exited $rc, not 1, with pieces missing"
expected=(runc dnsmasq-base podman-compose wget golang-github-containernetworking-plugin-dnsname debian-archive-keyring)
for p in "${expected[@]}"; do
  grep -q "^container_preflight: MISSING (Debian package $p): " "$work/out.log" || fail "no MISSING line names $p"
done
summary=$(grep '^container_preflight: FAIL: ' "$work/out.log") || fail "no FAIL line"
for p in "${expected[@]}"; do
  grep -q "apt-get install --no-install-recommends.* $p\b" <<<"$summary" || fail "the FAIL line does not list $p: $summary"
done
reported=$(sed -n 's/^container_preflight: MISSING (Debian package \([^)]*\)).*/\1/p' "$work/out.log" | sort -u)
[ "$reported" = "$(printf '%s\n' "${expected[@]}" | sort -u)" ] ||
  fail "the preflight named other packages than the missing ones: $(echo $reported)"
grep -q "no CNI plugin 'dnsname' in $work/cni" "$work/out.log" || fail "the dnsname line does not say where it looked"
echo "PASS: the preflight named ${expected[*]}"
