"""Link faults between the hosts of one model: loss, blackhole, delay, one-way loss and a flap.

Three network namespaces stand for three machines (netns.py: veth pairs to a bridge in the root
namespace, where the CLI runs), each with a parleyd holding a certificate of the model's CA:

  east  (ns1)  web/0, web/1   provides website
  west  (ns2)  lb/0           requires backends (web), provides front
  north (ns3)  obs/0          requires backends (web) and front (lb)

Every unit publishes its config's `gen` on each of its relations, so a config change of a
service sends one relation event to each remote unit, across the machines. Faults are made on
the links between the namespaces (never on the CLI's): loss by iptables on the receiving side
(the kernel here may have no sch_netem), delay by a relay in front of each parleyd (netns.py,
DelayProxy). Each fault runs while config changes flow (`parley config SERVICE gen=...`, a
new value each time):

  drop       30 % of the packets lost both ways between east and the others
  blackhole  west cut off (100 % loss both ways) until the peers' keepalives (2 s ping + 2 s
             timeout) have taken every stream with west down, then a while longer
  delay      200 ms ± 50 ms each way on every link; the model must settle while delayed too
  one-way    everything east sends to west lost; west's packets to east pass
  flap       west's links cut and restored five times (cuts longer and shorter than the
             keepalive), then restored

After each fault is healed, within SETTLE_BOUND and by polling (never by sleeping): `parley
wait` settles; every unit is idle, active, with an empty inbox and outbox, its status shows its
service's newest gen, and every link to a peer is connected again (the time that took is
reported as "links up"); each unit's relation data shows every remote unit's newest gen; and the
per-(relation, sender, receiver) sequences read from the agents' traces show no event applied
twice, out of order or with a gap, and every sequence sent applied (sequence_accounting.py).

Needs root, iproute2 and iptables; skipped (77) without root. About 2 minutes.

  sudo PYTHONPATH=build/python python3 tests/cli/netns_faults_test.py --bin build/bin
"""

import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from netns import (PORT, Failure, LinkFaults, Machines, Network, check, run, say,  # noqa: E402
                   tls_args, wait_for)
from sequence_accounting import Sequences  # noqa: E402

RELAY_PORT = 7100      # the delay relay in front of each parleyd
SETTLE_BOUND = 60      # s from a heal to a settled model (measured: a few seconds; see docs)
# s for the keepalives (2 s ping + 2 s timeout) to take a cut link's streams down (measured:
# 2.4-5.6 s from the cut, polls included)
DETECT_BOUND = 12
# s from a heal to every link connected again: the longest backoff (5 s), a dial's handshake
# timeout (3 s) and slack for a loaded machine (measured: under 4 s)
REDIAL_BOUND = 15
WRITE_INTERVAL = 0.3   # s between two config changes while a fault lasts (pacing the writes)

IFACE = """name: gen
description: A generation each side publishes.
required:
  gen: {type: string, description: The publisher's config generation.}
requirer:
  required:
    gen: {type: string, description: The publisher's config generation.}
"""

# service -> (host namespace index, units, provided endpoints, required endpoints)
SERVICES = {
    "web": (0, 2, ["website"], []),
    "lb": (1, 1, ["front"], ["backends"]),
    "obs": (2, 1, [], ["backends", "front"]),
}
RELATIONS = [("web", "website", "lb", "backends"), ("web", "website", "obs", "backends"),
             ("lb", "front", "obs", "front")]
HOSTS = ["east", "west", "north"]


def definition(name, provides, requires):
    lines = ["name: %s" % name]
    for role, endpoints in (("provides", provides), ("requires", requires)):
        if endpoints:
            lines.append("%s:" % role)
            lines += ["  %s: gen" % e for e in endpoints]
    lines += ["config:", "  gen: {type: string, default: '0'}", "handlers:"]
    for e in provides + requires:
        lines += ["  - name: publish-%s" % e,
                  "    when: [%s.joined]" % e,
                  "    on: [config.changed, %s.joined, start]" % e,
                  "    action:",
                  "      kind: builtin",
                  "      steps:",
                  '        - relation-set: {endpoint: %s, key: gen, value: "{{config.gen}}"}' % e]
    lines += ["  - name: show",
              "    on: [config.changed, start]",
              "    action:",
              "      kind: builtin",
              "      steps:",
              '        - status: {state: active, message: "gen {{config.gen}}"}']
    return "\n".join(lines) + "\n"


def unit_names(service):
    return ["%s/%d" % (service, i) for i in range(SERVICES[service][1])]


def remotes_of():
    """unit -> endpoint -> the remote units it must see."""
    out = {u: {} for s in SERVICES for u in unit_names(s)}
    for a, ae, b, be in RELATIONS:
        for u in unit_names(a):
            out[u].setdefault(ae, []).extend(unit_names(b))
        for u in unit_names(b):
            out[u].setdefault(be, []).extend(unit_names(a))
    return out


class Test(Machines):
    def __init__(self, opts):
        super().__init__(opts, len(HOSTS))
        self.rng = random.Random(int(os.environ.get("PARLEY_CHAOS_SEED") or os.getpid()))
        self.expected = {s: "0" for s in SERVICES}
        self.generation = 0
        self.remotes = remotes_of()
        self.units = sorted(self.remotes)
        self.faults = None
        self.figures = []  # (fault, settle ms, links up ms, writes)

    # -- the model --------------------------------------------------------------------------

    def write_model(self):
        model = os.path.join(self.tmp, "model")
        os.makedirs(os.path.join(model, "interfaces"))
        with open(os.path.join(model, "interfaces", "gen.yaml"), "w") as f:
            f.write(IFACE)
        for name, (_, _, provides, requires) in SERVICES.items():
            os.makedirs(os.path.join(model, name))
            with open(os.path.join(model, name, "service.yaml"), "w") as f:
                f.write(definition(name, provides, requires))
        text = ["interfaces: interfaces", "hosts:"]
        text += ["  %s: {address: '%s'}" % (h, d.address) for h, d in zip(HOSTS, self.daemons)]
        text.append("services:")
        for name, (ns, units, _, _) in SERVICES.items():
            text += ["  %s:" % name, "    definition: %s" % name, "    units: %d" % units,
                     "    host: %s" % HOSTS[ns], "    config: {gen: '0'}"]
        text.append("relations:")
        text += ["  - [%s:%s, %s:%s]" % r for r in RELATIONS]
        with open(os.path.join(model, "model.yaml"), "w") as f:
            f.write("\n".join(text) + "\n")
        return os.path.join(model, "model.yaml")

    def write(self):
        """One config change of a random service, to a new generation."""
        service = self.rng.choice(sorted(SERVICES))
        self.generation += 1
        gen = "g%d" % self.generation
        self.parley("config", service, "gen=" + gen, quiet=True, timeout=30)
        self.expected[service] = gen

    # -- checks -----------------------------------------------------------------------------

    def status(self):
        st = json.loads(self.parley("status", "--json", quiet=True, timeout=30).stdout)
        return {u.get("agent"): u for u in st.get("units", [])}

    def links_down(self, units_status, pairs):
        """The links among PAIRS ((unit, peer)) that are not connected."""
        down = []
        for unit, peer in pairs:
            links = {p.get("agent"): p.get("state") for p in units_status[unit].get("peers", [])}
            if links.get(peer) != "PEER_LINK_STATE_CONNECTED":
                down.append("%s->%s: %s" % (unit, peer, links.get(peer, "no link")))
        return down

    def all_pairs(self):
        return [(u, r) for u, eps in self.remotes.items() for rs in eps.values() for r in rs]

    def converged(self, st=None):
        """None when the model shows the newest config everywhere (ST: its status, read now if
        not given); else what differs."""
        st = st or self.status()
        for u in self.units:
            s = st.get(u, {})
            w = s.get("workload", {})
            state = (s.get("agent_state"), int(s.get("inbox_depth", "0")),
                     int(s.get("outbox_unacked", "0")), w.get("state"), w.get("message", ""))
            want = ("AGENT_STATE_IDLE", 0, 0, "WORKLOAD_STATE_ACTIVE",
                    "gen %s" % self.expected[u.split("/")[0]])
            if state != want:
                return "%s: %r (want %r)" % (u, state, want)
        down = self.links_down(st, self.all_pairs())
        if down:
            return "links not connected: %s" % ", ".join(down)
        for u, endpoints in self.remotes.items():
            for endpoint, remotes in endpoints.items():
                data = json.loads(self.parley("relation-data", u, endpoint, "--json", quiet=True,
                                              timeout=30).stdout)
                bags = {b["name"]: b.get("data", {}) for r in data.get("relations", [])
                        for b in r.get("bags", [])}
                for r in remotes:
                    got = bags.get("unit:" + r, {}).get("gen")
                    if got != self.expected[r.split("/")[0]]:
                        return "%s sees %s's gen on %s as %r, not %r" % (
                            u, r, endpoint, got, self.expected[r.split("/")[0]])
        return None

    def settle(self, what, since):
        """Polls until the model has settled after WHAT (healed at SINCE), within SETTLE_BOUND;
        checks the accounting and records the figures."""
        links_ms = None
        late = {}  # (unit, peer) -> ms after SINCE it was last seen not connected
        deadline = since + SETTLE_BOUND
        diff = "not polled yet"
        while True:
            try:
                st = self.status()
                if links_ms is None:
                    down = self.links_down(st, self.all_pairs())
                    for d in down:
                        late[d.split(":")[0]] = (time.monotonic() - since) * 1000, d
                    if os.environ.get("PARLEY_TEST_LOG"):
                        say("links down %.0f ms after the heal: %s" % (
                            (time.monotonic() - since) * 1000, ", ".join(down) or "none"))
                    if not down:
                        links_ms = (time.monotonic() - since) * 1000
                diff = self.converged(st)
            except (Failure, ValueError, KeyError) as e:
                diff = "%s: %s" % (type(e).__name__, e)
            if diff is None:
                # Settled, as the poll that just ended saw it (the confirmations below add the
                # CLI's own time, not the model's).
                settle_ms = (time.monotonic() - since) * 1000
                break
            if time.monotonic() > deadline:
                raise Failure("not settled %d s after %s: %s" % (SETTLE_BOUND, what, diff))
            time.sleep(0.2)  # the poll's interval
        left = max(deadline - time.monotonic(), 5)
        self.parley("wait", "--timeout", "%ds" % left, quiet=True, timeout=left + 30)
        check(self.converged() is None, "after %s, parley wait settled but: %s" % (what, self.converged()))
        self.seqs.collect()
        triples, applied, problems = self.seqs.check()
        check(not problems, "sequence accounting after %s:\n  %s" % (what, "\n  ".join(problems)))
        slowest = max(late.values(), default=(0, "none"))
        say("settled after %s in %.0f ms (links up in %.0f ms, the last seen down: %s); %d peer "
            "events on %d (relation, sender, receiver) applied once, in order" % (
                what, settle_ms, links_ms or settle_ms, slowest[1], applied, triples))
        return settle_ms, links_ms or settle_ms

    def writes_for(self, seconds):
        """Config changes, one every WRITE_INTERVAL, for SECONDS (the fault's length)."""
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            self.write()
            n += 1
            time.sleep(WRITE_INTERVAL)  # pacing the writes, not waiting for anything
        return n

    def fault(self, name, inject, seconds, detect=None, hold=1.0):
        only = os.environ.get("PARLEY_NETNS_FAULTS")  # e.g. "blackhole,flap": those faults only
        if only and name.split()[0] not in only.split(","):
            return False
        """Injects a fault, writes while it lasts, heals it and settles. DETECT: (unit, peer)
        pairs whose links must go down (the keepalives' work) before the heal, which then waits
        HOLD seconds more."""
        say("fault %s" % name)
        t0 = time.monotonic()
        writes = inject() or 0
        writes += self.writes_for(seconds)
        if detect:
            def all_down():
                return (len(self.links_down(self.status(), detect)) == len(detect)
                        and (time.monotonic() - t0) * 1000)
            ms = wait_for("the keepalives to take every link across the cut down", all_down,
                          timeout=DETECT_BOUND, interval=0.2)
            say("every stream across the cut was down %.0f ms after it" % ms)
            writes += self.writes_for(hold)
        self.faults.heal()
        settle_ms, links_ms = self.settle(name, time.monotonic())
        check(links_ms <= REDIAL_BOUND * 1000, "after %s, the links took %.0f ms to come back "
              "(bound %d s)" % (name, links_ms, REDIAL_BOUND))
        self.figures.append((name, settle_ms, links_ms, writes))
        return True

    # -- the campaign -----------------------------------------------------------------------

    def run(self):
        LinkFaults.check_tools()
        Network.remove_stale()
        self.net.create()
        for h, i in zip(HOSTS, range(len(HOSTS))):
            self.parley("cert", h, "--ip", self.net.address(i), quiet=True)
        pki = os.path.join(self.model_dir, "pki")
        for i, h in enumerate(HOSTS):
            self.start(h, i, PORT, tls_args(os.path.join(pki, h)))
        # The relays and the fault chains come before any stream between the hosts.
        self.faults = LinkFaults(self.net, PORT, RELAY_PORT)
        model = self.write_model()
        self.parley("up", model, "--timeout", "120s")
        self.seqs = Sequences(lambda u: self.parley("trace", u, "--last", "100", "--json", quiet=True,
                                                    timeout=30).stdout, self.units)
        self.settle("up", time.monotonic())
        check(all(p.connections > 0 for p in self.faults.proxies),
              "a relay carried no stream: %s" % [p.connections for p in self.faults.proxies])

        east, west, north = 0, 1, 2
        west_units = [u for u in self.units if u.startswith("lb/")]
        east_units = [u for u in self.units if u.startswith("web/")]
        across_west = [(u, r) for u, r in self.all_pairs() if (u in west_units) != (r in west_units)]
        east_west = [(u, r) for u, r in across_west if u in east_units or r in east_units]
        self.fault("drop (30 % both ways, east and the others)",
                   lambda: self.faults.lose_between([east], [west, north], 0.3), 8)
        # Cut for longer than the peers' keepalives, the request-to-dial deadline (5 s) and the
        # time the links' backoff takes to reach its longest wait (5 s).
        self.fault("blackhole (west cut off)",
                   lambda: self.faults.lose_between([west], [east, north]), 2, detect=across_west,
                   hold=6)

        held = sum(p.held for p in self.faults.proxies)
        if self.fault("delay (200 ms ± 50 ms)", lambda: self.faults.delay(0.2, 0.05), 6):
            check(sum(p.held for p in self.faults.proxies) > held, "the relays delayed nothing")
        self.fault("one-way (east's packets to west lost)", lambda: self.faults.lose(east, west), 2,
                   detect=east_west)

        def flap():
            writes = 0
            for down, up in ((5, 1), (1, 1), (5, 0.5), (1, 1)):
                self.faults.lose_between([west], [east, north])
                writes += self.writes_for(down)
                self.faults.heal()
                writes += self.writes_for(up)
            self.faults.lose_between([west], [east, north])
            return writes
        self.fault("flap (west cut 4 times)", flap, 1)

        # The model settles while delayed too (a slow link is not a fault to heal).
        self.faults.delay(0.2, 0.05)
        writes = self.writes_for(3)
        settle_ms, links_ms = self.settle("writes over delayed links (still delayed)", time.monotonic())
        self.figures.append(("delayed, not healed", settle_ms, links_ms, writes))
        self.faults.heal()

        for name, settle_ms, links_ms, writes in self.figures:
            say("figure: %-45s settle %6.0f ms, links up %6.0f ms, %d writes during the fault" %
                (name, settle_ms, links_ms, writes))
        say("settle p50 %.0f ms, max %.0f ms over %d faults" % (
            statistics.median(f[1] for f in self.figures), max(f[1] for f in self.figures),
            len(self.figures)))
        self.parley("down", "--purge")

    def cleanup(self, failed):
        if self.faults is not None:
            self.faults.close()
        super().cleanup(failed)


if __name__ == "__main__":
    run(__doc__.split("\n")[0], Test)
