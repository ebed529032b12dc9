#!/usr/bin/env python3
"""End to end: examples/postgres with the real parley CLI: a streaming-replicated PostgreSQL 15.

(a) Three units come up: postgres/0 creates the cluster, the two others copy it and stream from
    it; rows written on the primary are read on both replicas.
(b) remove-unit of a replica, then of the primary: afterwards no process of the removed unit runs
    (none has its data directory as working directory, its postmaster.pid is gone, its port
    refuses connections), its stop handler stopped its server and nothing started it again while
    it was being removed (its log), and the remaining cluster has exactly one writable primary,
    which the replicas replay (issue 11: handlers ran on the departures after stop and left a
    second primary).
(c) The stale retry: the primary's server dies with its data (its unit stays), a unit is added
    and its first news names that dead primary, so pg_basebackup fails; then the dead primary's
    unit is removed, a replica promotes itself, and the new unit must converge as a replica of the
    new primary instead of retrying the stale event forever (issue 11); its trace shows the stale
    event folded or cancelled.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from e2e import EXAMPLES, Failure, Model, args, check, main, port_open, say, wait_for

opts = args(__doc__.splitlines()[0])

BIN = "/usr/lib/postgresql/15/bin"
PACKAGE = "postgresql-15"


def preflight():
    for tool in ("initdb", "pg_ctl", "pg_basebackup", "psql", "postgres"):
        check(os.access(os.path.join(BIN, tool), os.X_OK),
              "%s/%s is missing: install Debian's %s (tools/setup)" % (BIN, tool, PACKAGE))
    check(subprocess.run(["id", "-u", "postgres"], capture_output=True).returncode == 0,
          "no 'postgres' user: install Debian's %s (its postgresql-common creates it)" % PACKAGE)
    check(subprocess.run(["runuser", "--help"], capture_output=True).returncode == 0,
          "no runuser: install Debian's util-linux")


def psql(port, query, timeout=20):
    """Runs QUERY on the server at PORT; its output, stripped. Raises Failure on an error."""
    p = subprocess.run([os.path.join(BIN, "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                        "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-At", "-c", query],
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise Failure("psql on port %d: %s" % (port, p.stderr.strip()))
    return p.stdout.strip()


class Cluster:
    def __init__(self, m):
        self.m = m
        self.base = int(m.config["postgres"]["port"])
        self.units_dir = os.path.join(m.env["PARLEY_MODEL_DIR"], "units")

    def port(self, n):
        return self.base + n

    def data_dir(self, n):
        return os.path.join(self.units_dir, "postgres-%d" % n, "postgres", "data")

    def log(self, n):
        return os.path.join(self.units_dir, "postgres-%d" % n, "postgres", "postgres.log")

    def in_recovery(self, n):
        return {"t": True, "f": False}[psql(self.port(n), "SELECT pg_is_in_recovery()")]

    def primaries(self, units):
        """The units among UNITS whose server answers and is out of recovery."""
        out = []
        for n in units:
            try:
                if not self.in_recovery(n):
                    out.append(n)
            except Failure:
                pass
        return out

    def processes(self, n):
        """pid -> command line of every process whose working directory is unit N's data dir
        (the postmaster and every backend chdir there)."""
        data = os.path.realpath(self.data_dir(n))
        found = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.readlink("/proc/%s/cwd" % pid) == data:
                    with open("/proc/%s/cmdline" % pid, "rb") as f:
                        found[int(pid)] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                pass
        return found

    def log_size(self, n):
        try:
            return os.path.getsize(self.log(n))
        except FileNotFoundError:
            return 0

    def remove(self, n):
        """`parley remove-unit postgres/N`; then nothing of it runs, and its server was stopped by
        its stop handler (pg_ctl stop -m fast: "fast shutdown request"; the reaper's SIGTERM would
        be a smart one) and not started again while it was being removed (its log)."""
        was_running = bool(self.processes(n))
        offset = self.log_size(n)
        t0 = time.monotonic()
        out = self.m.run("remove-unit", "postgres/%d" % n)
        took = time.monotonic() - t0
        wait_for("no process of postgres/%d" % n, lambda: not self.processes(n), 30)
        check(not os.path.exists(os.path.join(self.data_dir(n), "postmaster.pid")),
              "postgres/%d's postmaster.pid is still there" % n)
        check(not port_open(self.port(n)), "postgres/%d's port %d still accepts connections" % (n, self.port(n)))
        with open(self.log(n), errors="replace") as f:
            f.seek(offset)
            lines = f.read().splitlines()
        stopped = [i for i, line in enumerate(lines) if "received fast shutdown request" in line]
        if was_running:
            check(stopped, "postgres/%d's stop handler did not stop its server; its log since remove-unit:\n%s\n%s" % (
                n, "\n".join(lines[-20:]), out))
        after = lines[stopped[0]:] if stopped else lines
        starts = [line for line in after if "ready to accept" in line]
        check(not starts, "postgres/%d's server was started again while it was being removed "
                          "(a handler ran after its stop): %s" % (n, starts))
        say("removed postgres/%d in %.1fs: no process, port %d refused, %s" % (
            n, took, self.port(n), "stopped by its stop handler, not restarted" if was_running else "not started"))

    def check_one_primary(self, units, expect):
        """Exactly one writable primary among UNITS (EXPECT), every other one a replica of it."""
        def settled():
            p = self.primaries(units)
            return p == [expect] and all(self.in_recovery(n) for n in units if n != expect)
        wait_for("postgres/%d the only primary among %s" % (expect, units), settled, 60)
        psql(self.port(expect), "INSERT INTO items(note) VALUES ('written on postgres/%d')" % expect)
        rows = psql(self.port(expect), "SELECT count(*) FROM items")
        for n in units:
            if n != expect:
                wait_for("postgres/%d to replay %s rows from postgres/%d" % (n, rows, expect),
                         lambda: psql(self.port(n), "SELECT count(*) FROM items") == rows, 60)
                replica_write = subprocess.run(
                    [os.path.join(BIN, "psql"), "-h", "127.0.0.1", "-p", str(self.port(n)), "-U", "postgres",
                     "-d", "postgres", "-At", "-c", "INSERT INTO items(note) VALUES ('on a replica')"],
                    capture_output=True, text=True, timeout=20)
                check(replica_write.returncode != 0 and "read-only" in replica_write.stderr,
                      "a write on replica postgres/%d: %r" % (n, replica_write.stderr or replica_write.stdout))
        say("postgres/%d is the only writable primary; %s replay its %s rows" % (
            expect, ", ".join("postgres/%d" % n for n in units if n != expect) or "no replica", rows))

    def status(self, n):
        data = json.loads(self.m.run("status", "--json") or "{}")
        for u in data.get("units", []):
            if u.get("agent") == "postgres/%d" % n:
                return u
        return None


def test():
    preflight()
    with Model(opts, os.path.join(EXAMPLES, "postgres", "model.yaml")) as m:
        c = Cluster(m)
        m.run("wait", "--timeout", "120s")
        statuses = m.wait_active(["postgres"], timeout=60)
        say("statuses: %s" % statuses)
        check(statuses["postgres/0"].startswith("primary"), "postgres/0's status: %r" % statuses["postgres/0"])

        # (a) rows written on the primary are read on the replicas.
        psql(c.port(0), "CREATE TABLE items (id serial PRIMARY KEY, note text)")
        psql(c.port(0), "INSERT INTO items(note) SELECT 'row ' || i FROM generate_series(1, 100) i")
        c.check_one_primary([0, 1, 2], 0)
        out = m.action("postgres/1", "sql", "query=SELECT count(*) FROM items")
        check(out.get("result") == "101", "the sql action on postgres/1: %r" % out)

        # (b) remove a replica, then the primary.
        check(c.processes(2), "postgres/2 has no process before its removal (the check would be empty)")
        c.remove(2)
        c.check_one_primary([0, 1], 0)

        m.run("add-unit", "postgres")  # postgres/3, a replica of postgres/0
        wait_for("postgres/3 a replica", lambda: c.in_recovery(3), 120)
        c.check_one_primary([0, 1, 3], 0)

        c.remove(0)
        c.check_one_primary([1, 3], 1)  # postgres/1, the lowest replica, promoted itself

        # (c) the stale retry: postgres/1's server dies, and its data with it (so that its unit
        # cannot start it again: it is a fresh unit now, and will say so when it next converges),
        # while its peers' data still says it is primary. A new unit hears that first.
        subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(BIN, "pg_ctl"), "-D", c.data_dir(1),
                        "-m", "immediate", "-w", "stop"], check=True, capture_output=True)
        shutil.rmtree(c.data_dir(1))
        wait_for("postgres/1's port closed", lambda: not port_open(c.port(1)), 30)
        m.run("add-unit", "postgres")  # postgres/4
        stale = "pg_basebackup from postgres/1"
        wait_for("postgres/4 failing to copy the dead postgres/1 (its trace)",
                 lambda: stale in m.run("trace", "postgres/4", "--last", "100"), 90)
        c.remove(1)
        try:
            wait_for("postgres/4 a replica", lambda: c.in_recovery(4), 90)
        except Failure as e:
            raise Failure("%s; postgres/4's failure: %r" % (e, (c.status(4) or {}).get("failure")))
        c.check_one_primary([3, 4], 3)
        u = c.status(4)
        check(not u.get("failure"), "postgres/4 still has a failure: %r" % u.get("failure"))
        # How the stale event got out of the way: retried with postgres/1's newer data (folded), or
        # cancelled by its departure (docs/engine.md, "Relation data is a state too").
        trace = m.run("trace", "postgres/4", "--last", "100")
        runs = {}  # event id -> the texts of its runs
        for r in ("\n" + trace).split("\nrun ")[1:]:
            event = re.match(r"\d+: event (\d+) ", r)
            if event:
                runs.setdefault(event.group(1), []).append(r)
        stale_events = [e for e, rs in runs.items() if any(stale in r for r in rs)]
        check(stale_events, "postgres/4's trace has no failed attempt against postgres/1:\n%s" % trace)
        way = [line.strip() for e in stale_events for r in runs[e] for line in r.splitlines()[:3]
               if "CANCELLED" in line or "with the newer data of event" in line]
        check(way, "postgres/4's trace shows the stale event neither folded nor cancelled:\n%s" % trace)
        say("postgres/4's stale event: %s" % " / ".join(way))
        statuses = m.wait_active(["postgres"], timeout=60)
        check(statuses["postgres/4"].startswith("replica of postgres/3"), "postgres/4's status: %r" % statuses["postgres/4"])
        say("after the stale retry: %s" % statuses)

    wait_for("every port closed after down", lambda: not any(port_open(c.port(n)) for n in range(5)), 60)
    say("down: every port closed")


main(test)
