#!/usr/bin/env python3
"""End to end: the webstack's health probes (docs/service-definitions.md, "Health") with the real parley CLI.

- once up, `parley status` shows redis/0 and every app unit healthy, the balancer with no probes;
- redis-server SIGKILLed under its agent: status shows redis/0 unhealthy with the probe's error,
  the log says why, the trace has the run of `workload.unhealthy` (source health) whose handler
  `restart` starts the server again, and then status shows it healthy, with a new server
  process, and the trace the run of `workload.healthy`;
- the metrics expose the probe's results (checks failed, workload healthy again).
Every wait polls a condition with a bound; nothing sleeps blindly.
"""

import json
import os
import signal
import sys
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from e2e import EXAMPLES, Model, args, check, main, say, wait_for

opts = args(__doc__.splitlines()[0])


def health(m):
    """{unit: (health, first unhealthy probe's error)} from `parley status --json`."""
    status = json.loads(m.run("status", "--json", quiet=True) or "{}")
    out = {}
    for u in status.get("units", []):
        h = u.get("health", "").replace("WORKLOAD_HEALTH_", "").lower() or "-"
        if u.get("probes") and h == "-":
            h = "checking"
        errors = [p.get("last_error", "") for p in u.get("probes", [])
                  if p.get("health") == "WORKLOAD_HEALTH_UNHEALTHY"]
        out[u.get("agent", "")] = (h, errors[0] if errors else "")
    return out


def trace_runs(m, unit):
    """The triggers of the unit's traced runs, oldest first: [(event name, source)]."""
    data = json.loads(m.run("trace", unit, "--json", "--last", "100", quiet=True) or "{}")
    return [(t.get("trigger", {}).get("name", ""), t.get("trigger", {}).get("source", ""))
            for t in data.get("traces", [])]


def redis_pid(m):
    with open(os.path.join(m.env["PARLEY_MODEL_DIR"], "units", "redis-0", "redis.pid")) as f:
        return int(f.read().split()[0])


def metrics(m):
    host = json.loads(m.run("status", "--json", quiet=True))["host"]
    with urllib.request.urlopen("http://%s/metrics" % host["metrics_address"], timeout=5) as r:
        return r.read().decode()


def series(text, name, **labels):
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[len(name) + 1:line.index("}")].split(",")))
            if got == want:
                return float(line.rsplit(" ", 1)[1])
    return None


def test():
    with Model(opts, os.path.join(EXAMPLES, "webstack", "model.yaml")) as m:
        m.run("wait", "--timeout", "180s")
        m.wait_active(["redis", "app", "balancer"])
        healthy = wait_for("redis/0, app/0 and app/1 healthy", lambda: (lambda h: h if all(
            h.get(u, ("",))[0] == "healthy" for u in ("redis/0", "app/0", "app/1")) else None)(health(m)), 60, 0.2)
        check(healthy["balancer/0"][0] == "-", "the balancer declares no probes: %r" % (healthy["balancer/0"],))
        table = m.run("status", quiet=True)
        check("Health" in table and "healthy" in table, "status shows a Health column:\n%s" % table)
        say("healthy: %s" % {u: h for u, (h, _) in healthy.items()})
        before = len(trace_runs(m, "redis/0"))

        pid = redis_pid(m)
        os.kill(pid, signal.SIGKILL)
        say("SIGKILL redis-server (pid %d) under redis/0" % pid)
        # The probe connects every second and fails after two misses; the restart handler then
        # starts the server again and two passed connects later it is healthy: the unhealthy
        # window lasts over a second, and status is polled every 0.1 s.
        state, error = wait_for("status showing redis/0 unhealthy", lambda: (lambda h: h if h[0] == "unhealthy"
                                                                             else None)(health(m)["redis/0"]), 30, 0.1)
        check("refused" in error or "connect" in error, "the probe's error in status: %r" % error)
        say("status: redis/0 %s (%s)" % (state, error))

        def fired(name):
            runs = trace_runs(m, "redis/0")[before:]
            return runs if (name, "health") in runs else None

        wait_for("the run of workload.unhealthy in redis/0's trace", lambda: fired("workload.unhealthy"), 30, 0.2)
        wait_for("redis/0 healthy again", lambda: health(m)["redis/0"][0] == "healthy", 60, 0.2)
        runs = wait_for("the run of workload.healthy in redis/0's trace", lambda: fired("workload.healthy"), 30, 0.2)
        health_runs = [r for r in runs if r[1] == "health"]
        check(health_runs == [("workload.unhealthy", "health"), ("workload.healthy", "health")],
              "one event per transition, in order: %r" % health_runs)
        new_pid = redis_pid(m)
        check(new_pid != pid and os.path.exists("/proc/%d" % new_pid),
              "the restart handler started a new redis-server (pid %d, was %d)" % (new_pid, pid))
        say("workload.unhealthy fired, restart started redis-server again (pid %d), then workload.healthy" % new_pid)

        logs = m.run("logs", "--unit", "redis/0", quiet=True)
        check(any("redis/0: workload unhealthy: probe port failed: connect" in line for line in logs.splitlines()),
              "the log says why redis/0 became unhealthy:\n%s" % logs[-3000:])
        check("redis/0: workload healthy (probe port passes)" in logs, "the log says redis/0 is healthy again")
        facts = m.facts("redis/0")
        check("workload.healthy" in facts, "the fact workload.healthy is set again: %r" % sorted(facts))

        text = metrics(m)
        failed = series(text, "parley_agent_probe_checks_total", agent="redis/0", probe="port", result="fail")
        check(failed is not None and failed >= 2, "failed checks counted: %r" % failed)
        check(series(text, "parley_agent_workload_healthy", agent="redis/0") == 1, "workload healthy gauge")
        check(series(text, "parley_agent_probe_healthy", agent="app/0", probe="page") == 1, "app/0 page probe gauge")
        say("metrics: %d failed checks of redis/0's port probe, workload healthy again" % failed)


main(test)
