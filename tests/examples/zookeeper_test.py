#!/usr/bin/env python3
"""End to end: examples/zookeeper with the real parley CLI: three servers agree on ids and ports
over their peer relation, elect exactly one leader, and each reports its role in its status; when
a follower is removed, the other two keep their quorum."""

import os
import sys
import socket

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from e2e import EXAMPLES, Model, args, check, main, port_open, say, wait_for

opts = args(__doc__.splitlines()[0])


def four_letter(port, word, sep):
    """A four-letter word's answer as {key: value}: srvr says "Key: value", mntr "key<TAB>value"."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(word.encode())
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    pairs = (line.split(sep, 1) for line in data.decode().splitlines() if sep in line)
    return {k.strip(): v.strip() for k, v in pairs}


def test():
    with Model(opts, os.path.join(EXAMPLES, "zookeeper", "model.yaml")) as m:
        client = int(m.config["zookeeper"]["client_port"])
        m.run("wait", "--timeout", "240s")
        statuses = m.wait_active(["zookeeper"], timeout=240)
        roles = sorted(s.split()[0] for s in statuses.values())
        say("statuses: %s" % statuses)
        check(roles == ["follower", "follower", "leader"], "roles in the statuses: %r" % roles)

        # The servers themselves agree.
        modes = {i: four_letter(client + i, "srvr", ":").get("Mode") for i in range(3)}
        check(sorted(modes.values()) == ["follower", "follower", "leader"], "srvr modes: %r" % modes)
        leader = [i for i, mode in modes.items() if mode == "leader"][0]
        wait_for("the leader syncing 2 followers",
                 lambda: four_letter(client + leader, "mntr", "\t").get("zk_synced_followers") == "2", 60)
        say("leader is zookeeper/%d, with 2 synced followers (mntr)" % leader)
        check(statuses["zookeeper/%d" % leader].startswith("leader"), "the leader's status says so")

        out = m.action("zookeeper/%d" % leader, "srvr")
        check(out.get("mode") == "leader", "srvr action: %r" % out)

        # A follower leaves: the other two keep their quorum, and still say who leads.
        gone = [i for i, mode in modes.items() if mode == "follower"][0]
        m.run("remove-unit", "zookeeper/%d" % gone)
        m.run("wait", "--timeout", "120s")
        wait_for("zookeeper/%d's client port closed" % gone, lambda: not port_open(client + gone), 30)
        left = [i for i in range(3) if i != gone]
        wait_for("a leader and a follower among the two left",
                 lambda: sorted(four_letter(client + i, "srvr", ":").get("Mode") for i in left) == ["follower", "leader"], 60)
        statuses = m.wait_active(["zookeeper"], timeout=60)
        check(sorted(s.split()[0] for s in statuses.values()) == ["follower", "leader"], "statuses after remove-unit: %r" % statuses)
        say("after remove-unit zookeeper/%d: %s" % (gone, statuses))

    wait_for("every client port closed after down", lambda: not any(port_open(client + i) for i in range(3)), 60)
    say("down: client ports closed")


main(test)
