#!/usr/bin/env python3
"""Fault campaign on the webstack (real Redis, app servers and HAProxy under one parleyd).

The model comes up through the CLI; then, in a seeded random order (the seed is printed as
PARLEY_CHAOS_SEED=N; setting that variable replays the order and the kill moments):

- kill:     a config change (`parley config app|redis ...`), then SIGKILL of the parleyd at a
            random moment of what it sets off (sometimes while the `parley config` is still in
            flight: a change the CLI did not confirm is issued again, as an operator would), then
            `parley start`;
- down-up:  a config change, `parley down`, back with `parley start` (the changed config kept) or
            `parley up MODEL` (the model file's config applied again), then a config change;
- stop:     SIGSTOP of the parleyd for longer than the peers' keepalive (2 s ping + 2 s timeout)
            while a `parley config` waits on it (the CLI asks again), then SIGCONT;
- workload: redis-server, an app server or haproxy SIGKILLed under its agent, then a config
            change of that service (its handlers start what is not running).

Writes (PUT /kv/KEY) go through the balancer all along, from a thread; every one acknowledged
(HTTP 200) must read back through the balancer. After every fault, by accounting, not by
sleeping: `parley wait` settles within a bound; every unit is idle with an empty inbox and outbox,
active, and shows the newest config (status messages, GET / of each app unit, the balancer's
answers); every write acknowledged so far reads back; and the per-(relation, sender, receiver)
sequences read from the agents' traces (`parley trace --json`: the sequence each peer event was
received with, and each committed run's sent events) show nothing applied twice or out of order,
no gap where the traces are complete, and every sequence sent applied by its receiver.

Env: PARLEY_CHAOS_SEED (replay), PARLEY_CHAOS_FAULTS (e.g. "kill=6,down-up=2,stop=1,workload=3").
"""

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from sequence_accounting import Sequences  # noqa: E402
from e2e import EXAMPLES, Failure, Model, args, check, http, main, say, wait_for

opts = args(__doc__.splitlines()[0])

FAULTS = {"kill": 10, "down-up": 3, "stop": 2, "workload": 3}
SETTLE_BOUND = 150  # s: generous (ctest -j 4 on 2 cores); the accounting below is strict
STOP_SECONDS = 6    # > 2 s keepalive ping + 2 s timeout


def fault_counts():
    counts = dict(FAULTS)
    spec = os.environ.get("PARLEY_CHAOS_FAULTS", "")
    for item in filter(None, spec.split(",")):
        name, _, n = item.partition("=")
        check(name in counts and n.isdigit(),
              "PARLEY_CHAOS_FAULTS: '%s' is not NAME=N with NAME one of %s" % (item, ", ".join(counts)))
        counts[name] = int(n)
    return counts


class Writer(threading.Thread):
    """PUTs unique keys through the balancer; remembers those acknowledged (HTTP 200)."""

    def __init__(self, lb, tag):
        super().__init__(daemon=True)
        self.lb, self.tag = lb, tag
        self.lock = threading.Lock()
        self.acked = {}     # key -> value, acknowledged
        self.attempts = 0
        self.stopping = threading.Event()

    def run(self):
        n = 0
        while not self.stopping.is_set():
            n += 1
            key, value = "%s-%d" % (self.tag, n), "v%d-%d" % (n, random.randrange(1 << 30))
            try:
                status, _ = http("PUT", "%s/kv/%s" % (self.lb, key), value.encode(), timeout=3)
            except Exception:  # noqa: BLE001 - not acknowledged: nothing is promised
                status = 0
            self.attempts += 1
            if status == 200:
                with self.lock:
                    self.acked[key] = value
            self.stopping.wait(0.05 if status == 200 else 0.2)

    def snapshot(self):
        with self.lock:
            return dict(self.acked)


def test():
    seed = int(os.environ.get("PARLEY_CHAOS_SEED") or random.randrange(1, 1 << 31))
    say("PARLEY_CHAOS_SEED=%d" % seed)
    rng = random.Random(seed)
    counts = fault_counts()
    faults = [name for name, n in counts.items() for _ in range(n)]
    rng.shuffle(faults)
    say("faults: %s" % " ".join(faults))

    with Model(opts, os.path.join(EXAMPLES, "webstack", "model.yaml")) as m:
        base = {svc: dict(cfg) for svc, cfg in m.config.items()}
        expected = {svc: dict(cfg) for svc, cfg in m.config.items()}
        lb = "http://127.0.0.1:%d" % int(base["balancer"]["port"])
        units = ["redis/0", "app/0", "app/1", "balancer/0"]
        units_dir = os.path.join(m.env["PARLEY_MODEL_DIR"], "units")
        m.run("wait", "--timeout", "%ds" % SETTLE_BOUND)

        writer = Writer(lb, "w%d" % seed)
        seqs = Sequences(lambda u: m.run("trace", u, "--last", "100", "--json", quiet=True), units)
        settles = []
        verified = set()
        greeting_n = [0]

        def host_pid():
            return int(json.loads(m.run("status", "--json", quiet=True))["host"]["pid"])

        def config_change(service=None):
            """One change of an app or redis option, new each time; returns (service, key, value)."""
            service = service or rng.choice(["app", "app", "redis"])
            if service == "redis":
                key = "port"
                value = int(base["redis"]["port"]) + (10 if int(expected["redis"]["port"]) == int(base["redis"]["port"]) else 0)
            elif rng.random() < 0.7:
                greeting_n[0] += 1
                key, value = "greeting", "G%d-%d from" % (seed % 1000, greeting_n[0])
            else:
                key = "port"
                value = int(base["app"]["port"]) + (20 if int(expected["app"]["port"]) == int(base["app"]["port"]) else 0)
            return service, key, value

        def apply_config(change, **kw):
            service, key, value = change
            m.run("config", service, "%s=%s" % (key, value), **kw)
            expected[service][key] = value

        def converged():
            """None when every unit shows the newest config; else what differs."""
            st = json.loads(m.run("status", "--json", quiet=True))
            rport, aport = int(expected["redis"]["port"]), int(expected["app"]["port"])
            greeting = expected["app"]["greeting"]
            want = {
                "redis/0": "serving on 127.0.0.1:%d" % rport,
                "app/0": "serving on 127.0.0.1:%d with redis 127.0.0.1:%d" % (aport, rport),
                "app/1": "serving on 127.0.0.1:%d with redis 127.0.0.1:%d" % (aport + 1, rport),
                "balancer/0": "balancing 2 backends on 127.0.0.1:%d: app/0, app/1" % int(base["balancer"]["port"]),
            }
            seen = {u.get("agent"): u for u in st.get("units", [])}
            for name in units:
                u = seen.get(name, {})
                w = u.get("workload", {})
                state = (u.get("agent_state"), int(u.get("inbox_depth", "0")), int(u.get("outbox_unacked", "0")),
                         w.get("state"), w.get("message", ""))
                if state != ("AGENT_STATE_IDLE", 0, 0, "WORKLOAD_STATE_ACTIVE", want[name]):
                    return "%s: %r (want idle, 0, 0, active, %r)" % (name, state, want[name])
            for i in range(2):
                status, body = http("GET", "http://127.0.0.1:%d/" % (aport + i))
                got = (status, body.strip())
                if got != (200, "%s app/%d" % (greeting, i)):
                    return "GET / of app/%d: %r" % (i, got)
            through = {(lambda r: (r[0], r[1].strip()))(http("GET", lb + "/")) for _ in range(4)}
            if through != {(200, "%s app/%d" % (greeting, i)) for i in range(2)}:
                return "GET / through the balancer: %r" % through
            return None

        def read_back(final=False):
            acked = writer.snapshot()
            todo = sorted(acked) if final else [k for k in acked if k not in verified]
            older = sorted(verified)
            todo += rng.sample(older, min(20, len(older))) if not final else []
            for key in todo:
                got = http("GET", "%s/kv/%s" % (lb, key), timeout=10)
                check(got == (200, acked[key]),
                      "write %s=%s was acknowledged through the balancer, reads back %r" % (key, acked[key], got))
                verified.add(key)
            return len(todo)

        def wait_converged(what, timeout):
            """Polls converged() within TIMEOUT; a timeout says what still differs."""
            deadline = time.monotonic() + timeout
            while True:
                try:
                    diff = converged()
                except Exception as e:  # noqa: BLE001 - reported on timeout
                    diff = "%s: %s" % (type(e).__name__, e)
                if diff is None:
                    return
                if time.monotonic() > deadline:
                    raise Failure("not converged %.0f s after %s: %s" % (timeout, what, diff))
                time.sleep(0.25)

        def settle(what, since):
            m.run("wait", "--timeout", "%ds" % SETTLE_BOUND, timeout=SETTLE_BOUND + 60)
            left = SETTLE_BOUND - (time.monotonic() - since)
            wait_converged(what, max(left, 10))
            ms = (time.monotonic() - since) * 1000
            settles.append(ms)
            n = read_back()
            seqs.collect()
            triples, applied, problems = seqs.check()
            check(not problems, "sequence accounting after %s:\n  %s" % (what, "\n  ".join(problems)))
            say("settled after %s in %.0f ms; %d writes read back (%d acked of %d tried); "
                "%d peer events on %d (relation, sender, receiver) in order, once" %
                (what, ms, n, len(writer.acked), writer.attempts, applied, triples))

        wait_converged("up", 60)

        # A kill point found by the campaign (seed 1171592784, and 1 in 1 tries of killing the
        # parleyd 0-0.4 s into `parley config app greeting=...`): the serve handler had written
        # the new settings when the parleyd died, but not restarted the server yet; its retry
        # saw the settings unchanged and the server alive, and left the old greeting served for
        # good. Left here as such a handler leaves it, deterministically: the retry must restart.
        settings_file = os.path.join(units_dir, "app-0", "settings.json")
        with open(settings_file) as f:
            settings = json.load(f)
        greeting_n[0] += 1
        settings["greeting"] = "G%d-%d from" % (seed % 1000, greeting_n[0])
        with open(settings_file, "w") as f:
            f.write(json.dumps(settings, indent=2) + "\n")
        apply_config(("app", "greeting", settings["greeting"]))
        settle("a serve handler interrupted after writing its settings", time.monotonic())
        writer.start()
        t_start = time.monotonic()
        stats = {name: 0 for name in counts}
        try:
            for i, fault in enumerate(faults, 1):
                stats[fault] += 1
                label = "fault %d/%d (%s)" % (i, len(faults), fault)
                if fault == "kill":
                    change = config_change()
                    pid = host_pid()
                    if rng.random() < 0.4:
                        # Killed while the CLI is setting the config: it may or may not be applied.
                        service, key, value = change
                        cli = subprocess.Popen([m.parley, "config", service, "%s=%s" % (key, value)], env=m.env,
                                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                        time.sleep(rng.uniform(0, 0.4))
                        os.kill(pid, signal.SIGKILL)
                        out, _ = cli.communicate(timeout=120)
                        say("%s: SIGKILL parleyd %d during `parley config %s %s=%s` (exit %d)" %
                            (label, pid, service, key, value, cli.returncode))
                        m.run("start", "--no-wait")
                        since = time.monotonic()
                        if cli.returncode == 0:
                            expected[service][key] = value
                        else:
                            apply_config(change)  # what the CLI did not confirm, asked again
                    else:
                        apply_config(change)
                        delay = rng.uniform(0, 2.0)
                        time.sleep(delay)  # the kill point: somewhere in the runs it set off
                        os.kill(pid, signal.SIGKILL)
                        say("%s: SIGKILL parleyd %d %.2f s after `parley config %s %s=%s`" %
                            ((label, pid, delay) + change))
                        m.run("start", "--no-wait")
                        since = time.monotonic()
                elif fault == "down-up":
                    apply_config(config_change())
                    m.run("down")
                    if rng.random() < 0.5:
                        m.run("start", "--no-wait")
                        how = "start"
                    else:
                        m.run("up", m.file, "--no-wait")
                        for svc in ("redis", "app", "balancer"):
                            expected[svc] = dict(base[svc])
                        how = "up MODEL"
                    since = time.monotonic()
                    apply_config(config_change())
                    say("%s: down, %s, config changed before and after" % (label, how))
                elif fault == "stop":
                    pid = host_pid()
                    change = config_change()
                    os.kill(pid, signal.SIGSTOP)
                    service, key, value = change
                    cli = subprocess.Popen([m.parley, "config", service, "%s=%s" % (key, value)], env=m.env,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                    time.sleep(STOP_SECONDS)  # the fault's length, not a wait for anything
                    os.kill(pid, signal.SIGCONT)
                    since = time.monotonic()
                    out, _ = cli.communicate(timeout=120)
                    check(cli.returncode == 0, "`parley config %s %s=%s` while the parleyd was stopped "
                          "for %d s failed (%d): %s" % (service, key, value, STOP_SECONDS, cli.returncode, out))
                    expected[service][key] = value
                    say("%s: SIGSTOP parleyd %d for %d s with `parley config %s %s=%s` waiting" %
                        (label, pid, STOP_SECONDS, service, key, value))
                elif fault == "workload":
                    victim = ["redis", "app", "balancer"][(stats[fault] - 1) % 3]
                    unit_dir, pidname = {"redis": ("redis-0", "redis.pid"),
                                         "app": ("app-%d" % rng.randrange(2), "app.pid"),
                                         "balancer": ("balancer-0", "haproxy.pid")}[victim]
                    pidpath = os.path.join(units_dir, unit_dir, pidname)
                    check(os.path.exists(pidpath), "%s is missing while %s is settled: its daemon runs "
                          "untracked (two handlers at once?)" % (pidpath, unit_dir.replace("-", "/")))
                    with open(pidpath) as f:
                        wpid = int(f.read().split()[0])
                    os.kill(wpid, signal.SIGKILL)
                    wait_for("pid %d gone" % wpid, lambda: not os.path.exists("/proc/%d" % wpid) or
                             open("/proc/%d/stat" % wpid).read().split()[2] == "Z", 10, 0.05)
                    since = time.monotonic()
                    if victim == "balancer":
                        m.run("config", "balancer", "check_interval=%dms" % rng.choice([1500, 2000, 2500]))
                    else:
                        apply_config(config_change(victim))
                    say("%s: SIGKILL %s (pid %d) of %s, then a config change of %s" %
                        (label, pidname.split(".")[0], wpid, unit_dir.replace("-", "/"), victim))
                settle(label, since)
        finally:
            writer.stopping.set()
            writer.join(10)
        n = read_back(final=True)
        elapsed = time.monotonic() - t_start
        seqs.collect()
        triples, applied, problems = seqs.check()
        check(not problems, "sequence accounting at the end:\n  %s" % "\n  ".join(problems))
        say("campaign: seed %d, %d faults (%s), settle p50 %.0f ms max %.0f ms, %d writes acknowledged "
            "of %d tried, all %d read back, %d peer events on %d (relation, sender, receiver) applied "
            "once in order, traces complete for %s, %.1f s" %
            (seed, len(faults), ", ".join("%s %d" % kv for kv in stats.items()),
             statistics.median(settles) if settles else 0, max(settles) if settles else 0,
             len(writer.acked), writer.attempts, n, applied, triples,
             ", ".join(u for u, c in seqs.complete.items() if c) or "none", elapsed))


main(test)
