#!/usr/bin/env bash
# deploy/prometheus/alerts.yml: valid rules (promtool check rules), passing their unit tests
# (promtool test rules alerts_test.yml), and every alert tested both ways (a case where it fires
# and one where it must not).
set -euo pipefail
dir="$(cd "$(dirname "$0")/../../deploy/prometheus" && pwd)"
promtool="${PROMTOOL:-promtool}"
command -v "$promtool" >/dev/null || { echo "no promtool (tools/setup installs prometheus)"; exit 1; }

"$promtool" check rules "$dir/alerts.yml"
(cd "$dir" && "$promtool" test rules alerts_test.yml)

status=0
for alert in $(sed -n 's/^ *- alert: *\([A-Za-z0-9_]*\).*/\1/p' "$dir/alerts.yml"); do
  # The alertname lines of the test cases for this alert, each with the line after it.
  cases="$(grep -A1 -E "alertname: $alert\$" "$dir/alerts_test.yml" || true)"
  if ! grep -q 'exp_alerts: \[\]' <<<"$cases"; then
    echo "alerts_test.yml: no case where $alert must not fire"; status=1
  fi
  if ! grep -q 'exp_alerts:$' <<<"$cases"; then
    echo "alerts_test.yml: no case where $alert fires"; status=1
  fi
done
[ "$status" -eq 0 ] && echo "every alert of alerts.yml is tested firing and not firing"
exit "$status"
