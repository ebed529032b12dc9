"""Helpers for Python tests that run real `parleyd` processes.

Start one with `Parleyd.start(...)`, drive it through the generated stubs
(`from parley.v1 import agent_pb2, agent_pb2_grpc`; the build puts them in build/python, which
ctest adds to PYTHONPATH) and stop it with `stop()`. Every wait is bounded; children get
PR_SET_PDEATHSIG(SIGKILL), so a crashed test leaves no daemon behind.

Environment: PARLEYD is the binary under test (set by ctest), PARLEY_TEST_LOG=1 prints the daemons'
logs even when a test passes.
"""

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import grpc

from parley.v1 import agent_pb2
from parley.v1 import agent_pb2_grpc

# The bound of every RPC a test makes, so that a server that never answers fails the test.
CALL_TIMEOUT_S = 10


def free_port():
    """A port on 127.0.0.1 that was free a moment ago (another process may take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout_s, what, interval_s=0.02):
    """Polls `condition()` until it returns a truthy value, which is returned; raises
    TimeoutError naming `what` when `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    last_error = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except grpc.RpcError as e:  # the server may not answer yet
            last_error = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}"
                               + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval_s)


def _die_with_parent():
    # prctl(PR_SET_PDEATHSIG, SIGKILL): the daemon dies with the test.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


class Parleyd:
    """One running parleyd process with its own data directory, log and API channel."""

    def __init__(self, workdir, agents, metrics):
        self.workdir = workdir
        self.agents = agents
        self.log_path = os.path.join(workdir, "parleyd.log")
        self.metrics_port = None
        self.address = None
        self.process = None
        self.channel = None
        self.api = None
        self._metrics = metrics

    @classmethod
    def start(cls, agents, workdir=None, metrics=False, timeout_s=15, extra_args=()):
        """Starts parleyd hosting `agents` ("unit=kind,...") and waits until it listens. With
        `metrics`, /metrics is served on a free port (`metrics_port`); a port taken in between
        makes parleyd exit, and it is started again on another."""
        workdir = workdir or tempfile.mkdtemp(prefix="parleyd-")
        os.makedirs(workdir, exist_ok=True)
        last = None
        for _ in range(3):
            p = cls(workdir, agents, metrics)
            try:
                p._launch(timeout_s, extra_args)
                return p
            except ChildProcessError as e:  # exited early: maybe a port clash
                last = e
        raise last

    def _launch(self, timeout_s, extra_args):
        binary = os.environ.get("PARLEYD")
        if not binary:
            raise RuntimeError("PARLEYD (the parleyd binary under test) is not set")
        address_file = os.path.join(self.workdir, "address")
        if os.path.exists(address_file):
            os.remove(address_file)
        args = [binary, "--data=" + os.path.join(self.workdir, "data"), "--listen=127.0.0.1:0",
                "--agents=" + self.agents, "--plaintext", "--address_file=" + address_file]
        if self._metrics:
            self.metrics_port = free_port()
            args.append(f"--metrics_listen=127.0.0.1:{self.metrics_port}")
        args.extend(extra_args)
        with open(self.log_path, "a") as log:
            log.write("=== test: starting " + " ".join(args) + "\n")
            log.flush()
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL,
                                            preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        while not os.path.exists(address_file):
            if self.process.poll() is not None:
                raise ChildProcessError(f"parleyd exited with {self.process.returncode} before "
                                        f"listening:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"parleyd did not listen within {timeout_s} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.01)
        with open(address_file) as f:
            self.address = f.read().strip()
        self.channel = grpc.insecure_channel(self.address)
        self.api = agent_pb2_grpc.AgentStub(self.channel)

    def log_tail(self, lines=20):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s=10):
        """SIGTERM, then SIGKILL if it has not exited within `timeout_s`. Returns the exit code."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.terminate()
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=timeout_s)

    def metrics_url(self):
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


def check_idle(p, agent):
    return p.api.CheckIdle(agent_pb2.CheckIdleRequest(agent=agent), timeout=CALL_TIMEOUT_S)


def settled(agents):
    """Every (process, agent) idle in two consecutive rounds with equal total progress: nothing
    moved between agents in between (docs/protocol.md, "Knowing a model has settled")."""

    def round_progress():
        total = 0
        for p, agent in agents:
            r = check_idle(p, agent)
            if not r.idle:
                return None
            total += r.progress
        return total

    first = round_progress()
    return first is not None and round_progress() == first


def wait_settled(agents, timeout_s=20):
    wait_for(lambda: settled(agents), timeout_s,
             "agents " + ", ".join(a for _, a in agents) + " to settle")


def facts(p, agent):
    r = p.api.GetFacts(agent_pb2.GetFactsRequest(agent=agent), timeout=CALL_TIMEOUT_S)
    return {f.name: f.value for f in r.facts}


def test_failed(case):
    """In tearDown or a cleanup: has `case` failed so far? (Python >= 3.11 records failures in
    the result as they happen.)"""
    result = getattr(getattr(case, "_outcome", None), "result", None)
    if result is None:
        return True  # unknown: better show logs than hide them
    return any(test is case for test, _ in result.failures + result.errors)


def dump_logs(processes, stream=sys.stderr):
    for p in processes:
        if p is not None:
            stream.write(f"--- {p.log_path}\n{p.log_tail(60)}\n")
