#!/usr/bin/env python3
"""End to end: examples/webstack (or model-ansible.yaml) on this machine, with the real parley CLI.

- a value PUT through the balancer is in Redis (read with redis-cli and the negotiated password);
- GET / through the balancer round-robins over both app units, then over three after add-unit;
- a config change (app greeting) reaches every unit; the balancer's status counts its backends;
- a balancer setting haproxy refuses blocks the balancer and leaves haproxy serving;
- moving Redis to another port (config) moves every app unit to it, with no word to the app;
- user actions: redis info, app flush;
- remove-unit takes the unit out of the balancer;
- down stops every process, and up again brings the same data back (state dirs and facts kept).
"""

import os
import pwd
import random
import subprocess
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from e2e import EXAMPLES, Model, args, check, http, main, port_open, say, wait_for

opts = args(__doc__.splitlines()[0])


def test():
    with Model(opts, os.path.join(EXAMPLES, "webstack", "model.yaml")) as m:
        redis_port = int(m.config["redis"]["port"])
        app_base = int(m.config["app"]["port"])
        lb = "http://127.0.0.1:%d" % int(m.config["balancer"]["port"])

        m.run("wait", "--timeout", "180s")
        statuses = m.wait_active(["redis", "app", "balancer"])
        say("active: %s" % statuses)
        check("2 backends" in statuses["balancer/0"], "balancer status: %r" % statuses["balancer/0"])

        # The definitions name no user: their programs, and the daemons they start, run as the
        # unprivileged `parley` (parleyd --program_user), in state dirs of its own, mode 0700.
        parley = pwd.getpwnam("parley")
        units = os.path.join(m.env["PARLEY_MODEL_DIR"], "units")
        for name, pidfile in [("redis-0", "redis.pid"), ("app-0", "app.pid"), ("balancer-0", "haproxy.pid")]:
            st = os.stat(os.path.join(units, name))
            check((st.st_uid, st.st_gid, st.st_mode & 0o7777) == (parley.pw_uid, parley.pw_gid, 0o700),
                  "%s: owner %d:%d mode %o" % (name, st.st_uid, st.st_gid, st.st_mode & 0o7777))
            with open(os.path.join(units, name, pidfile)) as f:
                pid = int(f.read().split()[0])
            with open("/proc/%d/status" % pid) as f:
                uids = [line.split()[1:] for line in f if line.startswith("Uid:")][0]
            check(uids == [str(parley.pw_uid)] * 4, "%s (pid %d) runs as uids %s" % (pidfile, pid, uids))
        say("every workload runs as parley (uid %d) in a 0700 state dir of its own" % parley.pw_uid)

        # A value written through the balancer is in Redis.
        key, value = "e2e-%d" % random.randrange(1 << 30), "value-%d" % random.randrange(1 << 30)
        status, body = http("PUT", "%s/kv/%s" % (lb, key), value.encode())
        check(status == 200, "PUT through the balancer: %d %s" % (status, body))
        check(http("GET", "%s/kv/%s" % (lb, key)) == (200, value), "GET through the balancer")
        password = m.relation_data("app/0", "db")["unit:redis/0"]["password"]
        check(password == m.facts("redis/0")["redis.password"], "the app got the redis unit's password")
        stored = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(redis_port), "--no-auth-warning", "GET", key],
                                env=dict(os.environ, REDISCLI_AUTH=password), capture_output=True, text=True)
        check(stored.stdout.strip() == value, "redis-cli GET %s: %r %r" % (key, stored.stdout, stored.stderr))
        say("PUT through the balancer, read back from Redis: %s=%s" % (key, value))

        def answering(n):
            """Round robin over app/0..n-1: any n requests in a row reach n different units."""
            names = []
            for _ in range(2 * n):
                status, body = http("GET", lb + "/")
                names.append(body.split()[-1] if status == 200 else "HTTP %d" % status)
            windows_ok = all(len(set(names[i:i + n])) == n for i in range(n + 1))
            return names if windows_ok and set(names) == {"app/%d" % i for i in range(n)} else None

        say("round robin: %s" % wait_for("GET / round robin over app/0 and app/1", lambda: answering(2), 30))

        m.run("add-unit", "app")
        m.run("wait", "--timeout", "180s")
        say("round robin: %s" % wait_for("GET / round robin over 3 app units", lambda: answering(3), 90))
        wait_for("the balancer counting 3 backends", lambda: "3 backends" in m.units()["balancer/0"][1], 30)

        # Config change: every unit greets differently.
        m.run("config", "app", "greeting=Howdy from")

        def greeted():
            bodies = {http("GET", "http://127.0.0.1:%d/" % (app_base + i))[1].strip() for i in range(3)}
            return bodies == {"Howdy from app/%d" % i for i in range(3)} and bodies
        say("after config: %s" % sorted(wait_for("the new greeting on every app unit", greeted, 60)))
        check(http("GET", lb + "/")[1].startswith("Howdy from"), "the new greeting through the balancer")

        # A setting haproxy refuses: blocked with its reason, the running haproxy untouched.
        m.run("config", "balancer", "balance=bogus")
        wait_for("the balancer blocked", lambda: m.units()["balancer/0"][0] == "blocked", 30)
        say("balance=bogus: %s" % m.units()["balancer/0"][1])
        check(http("GET", lb + "/")[0] == 200, "haproxy still serving with the old config")
        m.run("config", "balancer", "balance=roundrobin")
        wait_for("the balancer active again", lambda: m.units()["balancer/0"][0] == "active", 30)

        # Redis moves: the apps follow the relation data, nobody configures them.
        redis_port += 10
        m.run("config", "redis", "port=%d" % redis_port)
        where = "redis 127.0.0.1:%d" % redis_port
        wait_for("every app unit using %s" % where,
                 lambda: all(where in msg for u, (state, msg) in m.units().items() if u.startswith("app/")), 60)
        m.wait_active(["redis", "app", "balancer"], 60)
        check(http("PUT", "%s/kv/%s" % (lb, key), b"moved")[0] == 200, "PUT after redis moved")
        check(http("GET", "%s/kv/%s" % (lb, key)) == (200, "moved"), "GET after redis moved")
        say("redis moved to port %d; the apps followed" % redis_port)

        # User actions.
        info = m.action("redis/0", "info")
        check(info.get("redis_version", "").startswith("7") and info.get("port") == str(redis_port), "redis info: %r" % info)
        flushed = m.action("app/0", "flush")
        check(int(flushed.get("flushed", "0")) >= 1, "app flush: %r" % flushed)
        check(http("GET", "%s/kv/%s" % (lb, key))[0] == 404, "the key is gone after flush")
        say("actions: info %s, flush %s" % (info, flushed))

        # remove-unit: the balancer forgets it.
        m.run("remove-unit", "app/2")
        m.run("wait", "--timeout", "180s")
        wait_for("the balancer counting 2 backends", lambda: "2 backends" in m.units()["balancer/0"][1], 60)
        say("after remove-unit: %s" % wait_for("GET / round robin over app/0 and app/1 only", lambda: answering(2), 30))
        check(not port_open(app_base + 2), "app/2's server stopped")

        # down without --purge stops every process; up again starts them on the same state.
        check(http("PUT", "%s/kv/%s" % (lb, key), b"kept")[0] == 200, "PUT before down")
        m.run("down")
        ports = [redis_port, app_base, app_base + 1, int(m.config["balancer"]["port"])]
        wait_for("every port closed after down", lambda: not any(port_open(p) for p in ports), 30)
        m.run("up", m.file)  # applies the model's config again: redis goes back to its port
        m.run("wait", "--timeout", "180s")
        ports.append(int(m.config["redis"]["port"]))
        say("up again: %s" % m.wait_active(["redis", "app", "balancer"], 60))
        check(http("GET", "%s/kv/%s" % (lb, key)) == (200, "kept"), "the value kept across down and up")

    wait_for("every port closed after down --purge", lambda: not any(port_open(p) for p in ports), 30)
    say("down --purge: ports %s closed" % ports)


main(test)
