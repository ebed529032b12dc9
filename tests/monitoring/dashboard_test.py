"""deploy/grafana/parley-dashboard.json against a real parleyd: every metric its queries (and the
alert rules of deploy/prometheus/alerts.yml) use is in the /metrics of running agents, with the
labels the queries match and group on; and every panel shows its series per agent."""

import json
import os
import re
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import monitoring_util as mu  # noqa: E402

pt = mu.pt

DASHBOARD = os.path.join(mu.REPO, "deploy", "grafana", "parley-dashboard.json")
ALERTS = os.path.join(mu.REPO, "deploy", "prometheus", "alerts.yml")

# Labels that Prometheus adds (job, instance), the scrape config adds (model; see
# deploy/prometheus/README.md) and histogram buckets carry.
TARGET_LABELS = {"job", "instance", "model", "le"}
METRIC = re.compile(r"\b(parley_[a-z0-9_]+)\b")
# `parley_x{a="1",b=~"$v"}`: the metric and its matchers' label names.
SELECTOR = re.compile(r"\b(parley_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def dashboard_queries(dashboard):
    """(where, expr, legend) of every panel target, rows' panels included, and every templating
    query."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((f"panel '{p.get('title')}' {t.get('refId')}", t.get("expr", ""),
                            t.get("legendFormat")))
            walk(p.get("panels", []))

    walk(dashboard.get("panels", []))
    for v in dashboard.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and q:
            out.append((f"variable ${v['name']}", q, None))
    return out


def alert_exprs():
    # One expr per line in alerts.yml (the file keeps them so); yaml may be absent.
    with open(ALERTS) as f:
        return [(f"alerts.yml line {i}", m.group(1), None) for i, line in enumerate(f, 1)
                for m in [re.match(r"\s*expr:\s*(.*)$", line)] if m]


class DashboardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="parley-dashboard-test-")
        model = mu.Model(cls.dir)
        try:
            samples, cls.families = [], {}
            for p in model.processes():
                s, f = mu.parse_text(mu.fetch(p.metrics_url()))
                samples += s
                cls.families.update(f)
        finally:
            model.stop()
            shutil.rmtree(cls.dir, ignore_errors=True)
        # metric name (as queried) -> label names seen on its series.
        cls.labels = {}
        for name, labels, _ in samples:
            cls.labels.setdefault(name, set()).update(labels)
            for suffix in HISTOGRAM_SUFFIXES:
                if name.endswith(suffix) and name[:-len(suffix)] in cls.families:
                    cls.labels.setdefault(name[:-len(suffix)], set()).update(labels)
        with open(DASHBOARD) as f:
            cls.dashboard = json.load(f)

    def exists(self, name):
        if name in self.families or name in self.labels:
            return True
        return any(name.endswith(s) and name[:-len(s)] in self.families
                   for s in HISTOGRAM_SUFFIXES)

    def check_names_and_labels(self, queries):
        problems = []
        for where, expr, _ in queries:
            names = METRIC.findall(expr)
            if not names and "up{" not in expr:
                problems.append(f"{where}: no parley metric in {expr!r}")
            for name in names:
                if not self.exists(name):
                    problems.append(f"{where}: {name} is not in parleyd's /metrics")
            known = set(TARGET_LABELS)
            for name in names:
                known |= self.labels.get(name, set())
            for name, matchers in SELECTOR.findall(expr):
                for label in MATCHER_LABEL.findall(matchers):
                    if label not in TARGET_LABELS | self.labels.get(name, set()):
                        problems.append(f"{where}: {name} has no label '{label}' "
                                        f"(it has {sorted(self.labels.get(name, set()))})")
            for group in GROUPING.findall(expr):
                for label in (g.strip() for g in group.split(",") if g.strip()):
                    if label not in known:
                        problems.append(f"{where}: groups by '{label}', which no metric of "
                                        f"{names} has")
        return problems

    def test_the_real_metrics_have_the_expected_families(self):
        # The check below is only as good as the /metrics it reads: the model did work, has peer
        # streams and an agent in error, so every family has series.
        for name in ("parley_agent_runs_total", "parley_agent_run_duration_seconds",
                     "parley_peer_stream_up", "parley_agent_in_error"):
            self.assertIn(name, self.families)
        self.assertEqual(self.labels["parley_peer_stream_up"], {"agent", "peer"})
        # Trouble counters exist at 0 before any trouble (services/telemetry/metrics.cc).
        self.assertEqual(self.labels["parley_peer_reconnects_total"], {"agent", "peer"})
        self.assertEqual(self.labels["parley_peer_events_rejected_total"], {"agent", "reason"})

    def test_every_dashboard_metric_exists_with_its_labels(self):
        queries = dashboard_queries(self.dashboard)
        self.assertGreaterEqual(len(queries), 15)
        self.assertEqual(self.check_names_and_labels(queries), [])

    def test_every_alert_metric_exists_with_its_labels(self):
        queries = alert_exprs()
        self.assertGreaterEqual(len(queries), 7)
        self.assertEqual(self.check_names_and_labels(queries), [])

    def test_the_check_catches_a_wrong_name_and_label(self):
        problems = self.check_names_and_labels([
            ("typo", 'rate(parley_agent_run_total{agent="a/0"}[1m])', None),
            ("label", 'parley_agent_inbox_depth{peer="c/0"}', None),
            ("grouping", 'sum by (reason) (parley_agent_inbox_depth)', None)])
        self.assertEqual({p.split(":")[0] for p in problems}, {"typo", "label", "grouping"},
                         problems)

    def test_every_panel_is_per_agent(self):
        panels = [p for p in self.dashboard["panels"] if p["type"] != "row"]
        self.assertEqual(len({p["id"] for p in self.dashboard["panels"]}),
                         len(self.dashboard["panels"]), "panel ids must be unique")
        for p in panels:
            self.assertTrue(p.get("title"), p)
            self.assertEqual(p["datasource"]["uid"], "${datasource}", p["title"])
            self.assertTrue(p["targets"], p["title"])
            for t in p["targets"]:
                self.assertIn("{{agent}}", t["legendFormat"], f"{p['title']} {t['refId']}")
                self.assertIn('agent=~"$agent"', t["expr"], f"{p['title']} {t['refId']}")
        titles = " ".join(p["title"] for p in panels).lower()
        for subject in ("runs/s", "run duration", "inbox depth", "peers connected", "failures",
                        "retries"):
            self.assertIn(subject, titles)


if __name__ == "__main__":
    unittest.main(verbosity=2)
