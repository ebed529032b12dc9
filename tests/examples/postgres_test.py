#!/usr/bin/env python3
"""End to end: examples/postgres with the real parley CLI: a streaming-replicated PostgreSQL 15.

(a) Three units come up: postgres/0 creates the cluster, the two others copy it and stream from
    it; rows written on the primary are read on both replicas.
(b) remove-unit of a replica, then of the primary: afterwards no process of the removed unit runs
    (none has its data directory as working directory, its postmaster.pid is gone, its port
    refuses connections), its server was not started again after its stop handler stopped it
    (its log), and the remaining cluster has exactly one writable primary, which the replicas
    follow (issue 11: handlers ran on the departures after stop and left a second primary).
(c) The stale retry: the primary's server dies (its unit stays), a unit is added and its first
    news names that dead primary, so pg_basebackup fails; then the dead primary's unit is removed,
    a replica promotes itself, and the new unit must converge as a replica of the new primary
    instead of retrying the stale event forever (issue 11).
"""

import json
import os
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

    def starts_after_stop(self, n):
        """How often unit N's server became ready again after it first shut down (its log): the
        test stops a server only by removing its unit (or, in (c), by killing it for good)."""
        with open(self.log(n), errors="replace") as f:
            lines = f.read().splitlines()
        shut = [i for i, line in enumerate(lines) if "database system is shut down" in line]
        check(shut, "postgres/%d's log never says it shut down: its stop handler did not stop it" % n)
        return sum(1 for line in lines[shut[0]:] if "ready to accept" in line)

    def check_gone(self, n):
        """Nothing of removed unit N runs, and nothing restarted its server after its stop."""
        wait_for("no process of postgres/%d" % n, lambda: not self.processes(n), 30)
        check(not os.path.exists(os.path.join(self.data_dir(n), "postmaster.pid")),
              "postgres/%d's postmaster.pid is still there" % n)
        check(not port_open(self.port(n)), "postgres/%d's port %d still accepts connections" % (n, self.port(n)))
        restarts = self.starts_after_stop(n)
        check(restarts == 0, "postgres/%d's server was started again %d time(s) after its stop handler "
                             "stopped it (a handler ran while it was being removed)" % (n, restarts))
        say("postgres/%d: no process, port %d refused, not restarted after its stop" % (n, self.port(n)))

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
        m.run("remove-unit", "postgres/2")
        c.check_gone(2)
        c.check_one_primary([0, 1], 0)

        m.run("add-unit", "postgres")  # postgres/3, a replica of postgres/0
        wait_for("postgres/3 a replica", lambda: c.in_recovery(3), 120)
        c.check_one_primary([0, 1, 3], 0)

        m.run("remove-unit", "postgres/0")
        c.check_gone(0)
        c.check_one_primary([1, 3], 1)  # postgres/1, the lowest replica, promoted itself

        # (c) the stale retry: postgres/1's server dies for good (its data directory unreadable, so
        # that its unit cannot start it again), while its unit still says it is primary; a new unit
        # hears that first.
        subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(BIN, "pg_ctl"), "-D", c.data_dir(1),
                        "-m", "immediate", "-w", "stop"], check=True, capture_output=True)
        os.chmod(c.data_dir(1), 0)
        wait_for("postgres/1's port closed", lambda: not port_open(c.port(1)), 30)
        m.run("add-unit", "postgres")  # postgres/4

        def failing_on_the_dead_primary():
            u = c.status(4) or {}
            failure = u.get("failure") or {}
            return ("pg_basebackup from postgres/1" in failure.get("message", "") and
                    int(failure.get("attempt", 0)) >= 2 and failure)
        failure = wait_for("postgres/4 failing twice to copy the dead postgres/1", failing_on_the_dead_primary, 90)
        say("postgres/4 fails on %s: attempt %s: %s" % (
            failure.get("event_name"), failure.get("attempt"), failure.get("message", "").splitlines()[0]))

        m.run("remove-unit", "postgres/1")
        c.check_gone(1)
        try:
            wait_for("postgres/4 a replica", lambda: c.in_recovery(4), 90)
        except Failure as e:
            raise Failure("%s; postgres/4's failure: %r" % (e, (c.status(4) or {}).get("failure")))
        c.check_one_primary([3, 4], 3)
        u = c.status(4)
        check(not u.get("failure"), "postgres/4 still has a failure: %r" % u.get("failure"))
        # How the stale event got out of the way: retried with postgres/1's newer data (folded), or
        # cancelled by its departure (docs/engine.md, "Relation data is a state too").
        trace = m.run("trace", "postgres/4")
        runs = [r for r in trace.split("\nrun ") if "'%s'" % failure.get("event_name") in r.splitlines()[0]]
        way = [line.strip() for r in runs for line in r.splitlines()[:3]
               if "CANCELLED" in line or "with the newer data of event" in line]
        check(way, "postgres/4's trace shows the stale event neither folded nor cancelled:\n%s" % trace)
        say("postgres/4's stale event: %s" % " / ".join(way))
        statuses = m.wait_active(["postgres"], timeout=60)
        check(statuses["postgres/4"].startswith("replica of postgres/3"), "postgres/4's status: %r" % statuses["postgres/4"])
        say("after the stale retry: %s" % statuses)

    wait_for("every port closed after down", lambda: not any(port_open(c.port(n)) for n in range(5)), 60)
    say("down: every port closed")


main(test)
