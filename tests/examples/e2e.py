"""Helpers for the end-to-end tests of the example models: a model brought up with the real
`parley` CLI in a temporary model directory, always taken down (--purge) at the end.

Every wait is bounded and polls a condition; nothing sleeps for a fixed time to let things
happen.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

EXAMPLES = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
T0 = time.monotonic()


def say(msg):
    print("[%6.1fs] %s" % (time.monotonic() - T0, msg), flush=True)


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def args(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--bin", default=os.environ.get("PARLEY_BIN", ""),
                   help="directory holding parley, parleyd and parley-hook (env PARLEY_BIN)")
    p.add_argument("--port-offset", type=int, default=int(os.environ.get("PARLEY_E2E_PORT_OFFSET", "0")),
                   help="added to every port option of the model (env PARLEY_E2E_PORT_OFFSET)")
    p.add_argument("--keep", action="store_true", help="leave the model running (no down --purge)")
    p.add_argument("model", nargs="?", help="the model file (default: the test's example)")
    return p.parse_args()


def wait_for(what, fn, timeout=120.0, interval=0.5):
    """Polls FN until it returns something truthy; its last value or exception explains a timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = fn()
            if value:
                return value
            last = value
        except Exception as e:  # noqa: BLE001 - reported on timeout
            last = "%s: %s" % (type(e).__name__, e)
        if time.monotonic() > deadline:
            raise Failure("timed out after %.0fs waiting for %s (last: %r)" % (timeout, what, last))
        time.sleep(interval)


def port_open(port, host="127.0.0.1"):
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def http(method, url, body=None, timeout=5):
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Model:
    """A model brought up by `parley up` in a temporary PARLEY_MODEL_DIR."""

    def __init__(self, opts, default_model):
        self.bin = os.path.abspath(opts.bin) if opts.bin else ""
        parley = os.path.join(self.bin, "parley") if self.bin else shutil.which("parley")
        check(parley and os.access(parley, os.X_OK), "no parley binary (pass --bin DIR or PARLEY_BIN)")
        self.parley = parley
        self.keep = opts.keep
        self.tmp = tempfile.mkdtemp(prefix="parley-e2e-")
        # The units' programs run as the unprivileged user `parley` (docs/service-definitions.md,
        # "The user programs run as"): it must reach their state dirs under the model directory.
        os.chmod(self.tmp, 0o755)
        self.env = dict(os.environ, PARLEY_MODEL_DIR=os.path.join(self.tmp, "model"))
        self.source = os.path.abspath(opts.model or default_model)
        self.offset = opts.port_offset
        self.file = self._derive()

    def _derive(self):
        """The model with absolute paths and every port option moved by the offset."""
        with open(self.source) as f:
            model = yaml.safe_load(f)
        base = os.path.dirname(self.source)
        if "interfaces" in model:
            model["interfaces"] = os.path.normpath(os.path.join(base, model["interfaces"]))
        for svc in model["services"].values():
            svc["definition"] = os.path.normpath(os.path.join(base, svc["definition"]))
            for key, value in list(svc.get("config", {}).items()):
                if key.endswith("port"):
                    svc["config"][key] = int(value) + self.offset
        path = os.path.join(self.tmp, os.path.basename(self.source))
        with open(path, "w") as f:
            yaml.safe_dump(model, f, sort_keys=False)
        self.config = {name: dict(s.get("config", {})) for name, s in model["services"].items()}
        return path

    def run(self, *argv, timeout=300, ok=True):
        say("$ parley " + " ".join(argv))
        p = subprocess.run([self.parley, *argv], env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if ok and p.returncode != 0:
            raise Failure("parley %s failed (%d):\n%s%s" % (" ".join(argv), p.returncode, p.stdout, p.stderr))
        return p.stdout

    def __enter__(self):
        # ctest's timeout and ^C end the test through __exit__, which takes the model down.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _interrupted)
        try:
            self.run("up", self.file)
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:
            self.dump()
        if self.keep:
            say("left running; PARLEY_MODEL_DIR=%s" % self.env["PARLEY_MODEL_DIR"])
            return False
        try:
            self.run("down", "--purge", timeout=180, ok=False)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False

    def dump(self):
        """What helps to understand a failure: status and the end of the logs."""
        for argv in (["status"], ["logs", "-n", "60"]):
            try:
                p = subprocess.run([self.parley, *argv], env=self.env, capture_output=True, text=True, timeout=30)
                sys.stderr.write("---- parley %s\n%s%s" % (" ".join(argv), p.stdout, p.stderr))
            except Exception as e:  # noqa: BLE001
                sys.stderr.write("---- parley %s: %s\n" % (" ".join(argv), e))

    def units(self):
        """{unit: (workload state, message)}, e.g. {"app/0": ("active", "serving ...")}."""
        status = json.loads(self.run("status", "--json") or "{}")
        out = {}
        for u in status.get("units", []):
            w = u.get("workload", {})
            state = w.get("state", "").replace("WORKLOAD_STATE_", "").lower()
            out[u.get("agent", "")] = (state, w.get("message", ""))
        return out

    def wait_active(self, services, timeout=180):
        """Waits until every unit of SERVICES is active; returns {unit: message}."""
        def all_active():
            units = self.units()
            mine = {u: s for u, s in units.items() if u.split("/")[0] in services}
            if not mine or any(state != "active" for state, _ in mine.values()):
                return None
            return {u: m for u, (_, m) in mine.items()}
        return wait_for("every unit of %s active" % ", ".join(services), all_active, timeout)

    def facts(self, unit):
        data = json.loads(self.run("facts", unit, "--json") or "{}")
        return {f["name"]: f.get("value", "") for f in data.get("facts", [])}

    def relation_data(self, unit, endpoint):
        """{bag name: data} over the endpoint's relations ("unit:redis/0", "local-unit", ...)."""
        data = json.loads(self.run("relation-data", unit, endpoint, "--json") or "{}")
        out = {}
        for rel in data.get("relations", []):
            for bag in rel.get("bags", []):
                out.setdefault(bag["name"], {}).update(bag.get("data", {}))
        return out

    def action(self, unit, action, *params):
        """`parley run`: the action's output as {key: value}."""
        out = self.run("run", unit, action, *params)
        result = {}
        for line in out.splitlines():
            key, sep, value = line.partition(": ")
            if sep:
                result[key] = value
        return result


def _interrupted(signum, frame):
    raise Failure("interrupted by signal %d" % signum)


def main(test):
    try:
        test()
    except Failure as e:
        say("FAIL: %s" % e)
        sys.exit(1)
    say("PASS")
