"""The real Prometheus scrapes real parleyd processes.

Two parleyd processes serve /metrics on free ports; relay a/0 in one feeds recorder c/0 and an
always-failing flaky f/0 in the other. The test writes the scrape config of
deploy/prometheus/README.md (with deploy/prometheus/alerts.yml as its rule file), starts the
`prometheus` binary on it and asks its HTTP API until the agents' series are there with their
labels and values, the alert rules evaluate, and f/0's in-error alert is pending or firing.
Every wait is bounded; every process is ended on exit. PROMETHEUS names another binary.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import monitoring_util as mu  # noqa: E402

pt = mu.pt

# Prometheus needs a few scrapes (1 s apart) and a rule evaluation; the machine is shared.
TIMEOUT_S = 90


class Prometheus:
    """A prometheus process on a free port with its TSDB in `workdir`."""

    def __init__(self, workdir, config):
        self.workdir = workdir
        self.config_path = os.path.join(workdir, "prometheus.yml")
        with open(self.config_path, "w") as f:
            f.write(config)
        self.log_path = os.path.join(workdir, "prometheus.log")
        self.process = None
        self.port = None

    def start(self, timeout_s=60):
        binary = os.environ.get("PROMETHEUS") or shutil.which("prometheus")
        if not binary:
            raise RuntimeError("no prometheus binary (tools/setup installs Debian's prometheus)")
        for _ in range(3):  # the free port may be taken in between: then it exits, try another
            self.port = pt.free_port()
            args = [binary, f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={os.path.join(self.workdir, 'tsdb')}",
                    f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
            with open(self.log_path, "a") as log:
                log.write("=== test: starting " + " ".join(args) + "\n")
                log.flush()
                self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL,
                                                preexec_fn=pt._die_with_parent)
            deadline = time.monotonic() + timeout_s
            while self.process.poll() is None:
                try:
                    if "Ready" in mu.fetch(self.url("/-/ready"), timeout_s=2):
                        return
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"prometheus not ready within {timeout_s} s:\n"
                                       + self.log_tail())
                time.sleep(0.1)
        raise ChildProcessError(f"prometheus exited with {self.process.returncode}:\n"
                                + self.log_tail())

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def api(self, path, **params):
        """GET /api/v1/<path>; its `data`, or an AssertionError with Prometheus' error."""
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        body = json.loads(mu.fetch(self.url("/api/v1/" + path + query)))
        if body.get("status") != "success":
            raise AssertionError(f"/api/v1/{path}{query}: {body}")
        return body["data"]

    def query(self, promql):
        """An instant query: [(labels, value)]."""
        data = self.api("query", query=promql)
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def log_tail(self, lines=30):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


class PrometheusTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="parley-prometheus-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)  # cleanups run last-in first-out
        self.model = mu.Model(os.path.join(self.dir, "model"))
        self.addCleanup(self.model.stop)
        rules = os.path.join(mu.REPO, "deploy", "prometheus", "alerts.yml")
        self.prometheus = Prometheus(self.dir, mu.scrape_config(
            self.model.metrics_targets(), model="test", rule_files=[rules]))
        self.addCleanup(self.prometheus.stop)
        self.prometheus.start()

    def tearDown(self):
        if pt.test_failed(self) or os.environ.get("PARLEY_TEST_LOG"):
            pt.dump_logs(self.model.processes())
            sys.stderr.write(f"--- {self.prometheus.log_path}\n{self.prometheus.log_tail()}\n")

    def wait_query(self, promql, check, what):
        """Polls an instant query until `check(result)` holds; returns the result."""
        last = []

        def attempt():
            last[:] = self.prometheus.query(promql)
            return check(last)

        try:
            pt.wait_for(attempt, TIMEOUT_S, what, interval_s=0.5)
        except TimeoutError as e:
            raise AssertionError(f"{e}; last answer to {promql}: {last}") from None
        return last

    def one(self, promql, what):
        """Waits until `promql` has exactly one series; returns (labels, value)."""
        return self.wait_query(promql, lambda r: len(r) == 1, what)[0]

    def test_prometheus_scrapes_the_agents(self):
        targets = set(self.model.metrics_targets())
        # Both targets are up, under job parley with the model's label.
        up = self.wait_query('up{job="parley",model="test"} == 1',
                             lambda r: {m["instance"] for m, _ in r} == targets,
                             "both parleyd targets up")
        self.assertEqual(len(up), 2)

        sender_instance = self.model.metrics_targets()[0]
        # Runs: a/0 committed install, start, relation events and the actions.
        labels, runs = self.one(
            'parley_agent_runs_total{job="parley",agent="a/0",result="committed"}',
            "a/0's committed runs")
        self.assertEqual(labels["instance"], sender_instance)
        self.assertEqual(labels["model"], "test")
        self.assertGreaterEqual(runs, 2 + mu.VALUES)
        # c/0 received every value exactly once (JOINED + one CHANGED per value).
        _, received = self.one('parley_peer_events_received_total{agent="c/0"}',
                               "c/0's received events")
        self.assertEqual(received, 1 + mu.VALUES)
        # Inbox depth of every agent, by agent label; c/0 and a/0 have drained theirs.
        depths = self.wait_query('parley_agent_inbox_depth{job="parley"}',
                                 lambda r: len(r) == 3, "the inbox depth of the three agents")
        depth = {m["agent"]: v for m, v in depths}
        self.assertEqual(set(depth), {"a/0", "c/0", "f/0"})
        self.assertEqual(depth["a/0"], 0)
        self.assertEqual(depth["c/0"], 0)
        # Peer streams across the processes are up, both ways, named by agent and peer.
        streams = self.wait_query('parley_peer_stream_up == 1', lambda r: len(r) >= 4,
                                  "the peer streams up")
        pairs = {(m["agent"], m["peer"]) for m, _ in streams}
        self.assertTrue({("a/0", "c/0"), ("c/0", "a/0"), ("a/0", "f/0"), ("f/0", "a/0")} <= pairs,
                        pairs)
        # The run-duration histogram: quantiles are computable per agent.
        self.one('histogram_quantile(0.9, sum by (agent, le) '
                 '(parley_agent_run_duration_seconds_bucket{agent="c/0"}))',
                 "c/0's run duration quantile")
        # f/0 fails forever: in error, its failed runs counted.
        in_error = self.wait_query('parley_agent_in_error == 1', lambda r: len(r) >= 1,
                                   "an agent in error")
        self.assertEqual([m["agent"] for m, _ in in_error], ["f/0"])
        _, failed = self.one('parley_agent_runs_total{agent="f/0",result="failed"}',
                             "f/0's failed runs")
        self.assertGreaterEqual(failed, 1)

        # The alert rules load and evaluate against these series without error.
        rules = self.wait_query_rules()
        self.assertEqual(len(rules), 7, [r["name"] for r in rules])
        for r in rules:
            self.assertEqual(r["health"], "ok", r)
        # f/0's alert is pending (its `for` has not passed) or firing; no other agent's is.
        alerts = pt.wait_for(lambda: [a for a in self.prometheus.api("alerts")["alerts"]
                                      if a["labels"]["alertname"] == "ParleyAgentInError"],
                             TIMEOUT_S, "ParleyAgentInError to be pending", interval_s=0.5)
        self.assertEqual([a["labels"]["agent"] for a in alerts], ["f/0"])
        self.assertIn(alerts[0]["state"], ("pending", "firing"))

    def wait_query_rules(self):
        """Waits until every alerting rule of alerts.yml has been evaluated once."""
        def evaluated():
            groups = self.prometheus.api("rules", type="alert")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            # Before its first evaluation a rule has health "unknown" and a zero timestamp.
            if rules and all(r.get("health") != "unknown"
                             and not r.get("lastEvaluation", "0001").startswith("0001")
                             for r in rules):
                return rules
            return None

        return pt.wait_for(evaluated, TIMEOUT_S, "the alert rules to be evaluated",
                           interval_s=0.5)


class ScrapeConfigDocTest(unittest.TestCase):
    """deploy/prometheus/README.md shows exactly what scrape_config() writes, and promtool
    accepts it."""

    def test_readme_example_is_the_generated_config(self):
        with open(os.path.join(mu.REPO, "deploy", "prometheus", "README.md")) as f:
            readme = f.read()
        start = readme.index("```yaml\n") + len("```yaml\n")
        example = readme[start:readme.index("```", start)]
        self.assertEqual(example, mu.scrape_config(
            ["10.0.0.5:9100", "10.0.0.6:9100"], model="shop", scrape_interval="15s",
            rule_files=["/etc/prometheus/parley/alerts.yml"]))

    def test_promtool_accepts_the_config(self):
        promtool = shutil.which("promtool")
        if not promtool:
            self.fail("no promtool (tools/setup installs prometheus)")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "prometheus.yml")
            with open(path, "w") as f:
                f.write(mu.scrape_config(["127.0.0.1:9100"], rule_files=[
                    os.path.join(mu.REPO, "deploy", "prometheus", "alerts.yml")]))
            r = subprocess.run([promtool, "check", "config", path], capture_output=True,
                               text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
