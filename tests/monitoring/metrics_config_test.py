"""`parley metrics-config` drives the real Prometheus.

A model of two services (builtin actions only) is brought up with the parley CLI; the scrape
config `parley metrics-config` prints, with deploy/prometheus/alerts.yml as its rule file, is
given to the `prometheus` binary as it is, and its HTTP API must then hold the agents' series
with the `parley` job, the model label and each unit's name, and load the alert rules.
PARLEY_BIN names the directory of parley and parleyd; every wait is bounded and the model is
always taken down with --purge.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import monitoring_util as mu  # noqa: E402
from prometheus_test import Prometheus, TIMEOUT_S  # noqa: E402

pt = mu.pt

WEB = """name: web
provides:
  website: http
handlers:
  - name: publish
    when: [website.joined]
    action:
      kind: builtin
      steps:
        - relation-set: {endpoint: website, key: host, value: "127.0.0.1"}
        - relation-set: {endpoint: website, key: port, value: "8000"}
"""

LB = """name: lb
requires:
  backends: http
handlers:
  - name: ready
    when: [backends.ready]
    action:
      kind: builtin
      steps:
        - status: {state: active, message: "port {{fact.backends.remote.port}}"}
"""


class MetricsConfigTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="parley-metrics-config-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.bin = os.environ["PARLEY_BIN"]
        for name, text in (("web", WEB), ("lb", LB)):
            os.makedirs(os.path.join(self.dir, name))
            with open(os.path.join(self.dir, name, "service.yaml"), "w") as f:
                f.write(text)
        self.model = os.path.join(self.dir, "model.yaml")
        with open(self.model, "w") as f:
            f.write(f"interfaces: {os.path.join(mu.REPO, 'examples', 'interfaces')}\n"
                    "services:\n  web: {definition: web, units: 2}\n  lb: {definition: lb}\n"
                    "relations:\n  - [web:website, lb:backends]\n")
        self.env = dict(os.environ, PARLEY_MODEL_DIR=os.path.join(self.dir, "state"))
        self.addCleanup(self.parley, "down", "--purge", check=False)

    def parley(self, *args, check=True):
        r = subprocess.run([os.path.join(self.bin, "parley"), *args], env=self.env,
                           capture_output=True, text=True, timeout=180)
        if check and r.returncode != 0:
            raise AssertionError(f"parley {' '.join(args)}: exit {r.returncode}\n{r.stderr}")
        return r.stdout

    def test_prometheus_runs_on_the_printed_config(self):
        self.parley("up", self.model, "--timeout", "60s")
        rules = os.path.join(mu.REPO, "deploy", "prometheus", "alerts.yml")
        config = self.parley("metrics-config", self.model, "--interval", "1s", "--rules", rules,
                             "--name", "shop")
        prometheus = Prometheus(self.dir, config)
        self.addCleanup(prometheus.stop)
        prometheus.start()

        def runs():
            return prometheus.query('parley_agent_runs_total{job="parley",model="shop",'
                                    'result="committed"}')

        last = []

        def every_unit_reported():
            last[:] = runs()
            return {m["agent"] for m, v in last if v > 0} >= {"web/0", "web/1", "lb/0"}

        try:
            pt.wait_for(every_unit_reported, TIMEOUT_S, "runs of every unit", interval_s=0.5)
        except TimeoutError as e:
            raise AssertionError(f"{e}; last answer: {last}\n{prometheus.log_tail()}") from None
        up = prometheus.query('up{job="parley",model="shop"}')
        self.assertEqual([v for _, v in up], [1.0])
        groups = prometheus.api("rules")["groups"]
        self.assertTrue(any(r["name"] == "ParleyAgentInError" for g in groups for r in g["rules"]),
                        groups)


if __name__ == "__main__":
    unittest.main(verbosity=2)
