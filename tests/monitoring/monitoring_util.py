"""What the monitoring tests share: a small model of real parleyd processes doing work, the scrape
config of deploy/prometheus/README.md, and reading Prometheus text."""

import os
import re
import sys
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import parley_testing as pt  # noqa: E402

from parley.v1 import agent_pb2  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
T = pt.CALL_TIMEOUT_S

# The model: relay a/0 in one process feeds recorder c/0 and flaky f/0 in another. f/0 is told to
# fail (nearly) forever, so it stays in error with its retries climbing.
SENDER, RECORDER, FLAKY = "a/0", "c/0", "f/0"
VALUES = 5


class Model:
    """Two parleyd processes with /metrics, related and past some work; `stop()` ends them."""

    def __init__(self, workdir):
        self.sender = self.receiver = None
        self.sender = pt.Parleyd.start(f"{SENDER}=relay", os.path.join(workdir, "p1"),
                                       metrics=True)
        try:
            self.receiver = pt.Parleyd.start(f"{RECORDER}=recorder,{FLAKY}=flaky",
                                             os.path.join(workdir, "p2"), metrics=True)
            self._work()
        except BaseException:
            self.stop()
            raise

    def _work(self):
        self.receiver.api.SetConfig(
            agent_pb2.SetConfigRequest(agent=FLAKY, set={"fail_times": "1000000"}), timeout=T)
        for rid, agent in (("feed:1", RECORDER), ("feed:2", FLAKY)):
            self.sender.api.Relate(
                agent_pb2.RelateRequest(agent=SENDER, relation_id=rid, endpoint="out",
                                        remote_agent=agent, remote_address=self.receiver.address,
                                        remote_endpoint="in"), timeout=T)
        for i in range(1, VALUES + 1):
            self.sender.api.FireEvent(
                agent_pb2.FireEventRequest(agent=SENDER, event="action.set",
                                           params={"value": str(i)}), timeout=T)
        want = ",".join(str(i) for i in range(1, VALUES + 1))
        pt.wait_for(lambda: pt.facts(self.receiver, RECORDER).get("seen") == want, 30,
                    f"{RECORDER} to record {want}")
        pt.wait_for(lambda: self.receiver.api.GetStatus(
            agent_pb2.GetStatusRequest(agent=FLAKY), timeout=T).agent_state ==
            agent_pb2.AGENT_STATE_ERROR, 30, f"{FLAKY} to be in error")

    def processes(self):
        return [p for p in (self.sender, self.receiver) if p is not None]

    def metrics_targets(self):
        return [f"127.0.0.1:{p.metrics_port}" for p in self.processes()]

    def stop(self):
        codes = [p.stop() for p in self.processes()]
        return codes


def scrape_config(targets, model="test", scrape_interval="1s", rule_files=()):
    """The Prometheus config of deploy/prometheus/README.md: one job `parley`, one static target
    per parleyd --metrics_listen address, labelled with the model's name."""
    lines = [
        "# Parley: scrape every parleyd of a model (deploy/prometheus/README.md).",
        "global:",
        f"  scrape_interval: {scrape_interval}",
        f"  evaluation_interval: {scrape_interval}",
    ]
    if rule_files:
        lines.append("rule_files:")
        lines += [f"  - {f}" for f in rule_files]
    lines += [
        "scrape_configs:",
        "  - job_name: parley",
        f"    scrape_interval: {scrape_interval}",
        "    metrics_path: /metrics",
        "    static_configs:",
        "      - targets:",
    ]
    lines += [f"          - {t}" for t in targets]
    lines += [
        "        labels:",
        f"          model: {model}",
    ]
    return "\n".join(lines) + "\n"


def fetch(url, timeout_s=5):
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return r.read().decode()


# `name{labels} value` or `name value`; comments and blank lines are skipped.
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_text(text):
    """Prometheus text format -> (samples, families). samples: [(name, {label: value}, value)];
    families: {family name: type} from the # TYPE lines (a family with no series yet is there)."""
    samples, families = [], {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            families[name] = kind
            continue
        m = SAMPLE.match(line)
        if m:
            samples.append((m.group(1), dict(LABEL.findall(m.group(3) or "")),
                            float(m.group(4))))
    return samples, families
