"""Exactly-once, in-order accounting of relation events, read from the agents' traces.

For every (relation, sender, receiver): the sequences the receiver applied (the sequence each
peer event was received with, from its traces) and those the sender's committed runs sent. Used
by the fault campaigns (tests/examples/webstack_chaos_test.py, tests/cli/netns_faults_test.py).
"""

import json


class Sequences:
    """Per-(relation, sender, receiver) accounting from the agents' traces."""

    def __init__(self, trace_json, units):
        """TRACE_JSON(unit): what `parley trace UNIT --last 100 --json` prints for it."""
        self.trace_json, self.units = trace_json, units
        self.runs = {u: {} for u in units}  # unit -> run number -> trace
        self.complete = {u: True for u in units}  # whether every run since the first was seen

    def collect(self):
        for u in self.units:
            data = json.loads(self.trace_json(u) or "{}")
            traces = data.get("traces", [])
            seen = self.runs[u]
            numbers = sorted(int(t["run"]) for t in traces)
            if seen and numbers and numbers[0] > max(seen) + 1:
                self.complete[u] = False  # runs went by unseen (more than 100 since the last look)
            for t in traces:
                seen[int(t["run"])] = t

    def check(self):
        """Returns (triples checked, events applied, problems)."""
        received = {}  # (relation, sender, receiver) -> [(event id, seq)] in inbox order
        sent = {}      # (relation, sender, receiver) -> [(run, seq)]
        problems = []
        for u, runs in self.runs.items():
            events = {}
            for run, t in sorted(runs.items()):
                trig = t.get("trigger", {})
                rel = trig.get("relation", {})
                if t.get("result") == "RESULT_COMMITTED":
                    for msg in t.get("messages", []):
                        # The event as sent (OutboxEntry.event, docs/protocol.md); the entry
                        # names its destination.
                        ev = msg.get("event", msg)
                        sent.setdefault((ev["relation_id"], u, msg["destination"]), []).append(
                            (run, int(ev["sequence"])))
                if not trig.get("source", "").startswith("peer:"):
                    continue
                seq = int(rel.get("sequence", "0"))
                if seq == 0:
                    continue
                eid = int(trig["id"])
                key = (rel["relation_id"], rel["remote_unit"], u)
                prev = events.get(eid)
                if prev is not None and prev != (key, seq):
                    problems.append("%s: event %d seen as %r and as %r" % (u, eid, prev, (key, seq)))
                events[eid] = (key, seq)
            for eid, (key, seq) in sorted(events.items()):
                received.setdefault(key, []).append((eid, seq))
        for key, items in received.items():
            seqs = [s for _, s in items]
            if len(set(seqs)) != len(seqs):
                problems.append("%s: sequence applied twice: %s" % (key, seqs))
            if seqs != sorted(seqs):
                problems.append("%s: sequences out of order: %s" % (key, seqs))
            if self.complete[key[2]] and seqs and seqs != list(range(seqs[0], seqs[0] + len(seqs))):
                problems.append("%s: a gap in the sequences applied: %s" % (key, seqs))
        for key, items in sent.items():
            seqs = [s for _, s in items]
            if len(set(seqs)) != len(seqs) or seqs != sorted(seqs):
                problems.append("%s: sequences sent twice or out of order: %s" % (key, seqs))
            got = [s for _, s in received.get(key, [])]
            if key[2] in self.units and seqs and (not got or max(got) < max(seqs)):
                problems.append("%s: sent up to %d, the receiver applied up to %s" %
                                (key, max(seqs), max(got) if got else "nothing"))
        return len(received), sum(len(v) for v in received.values()), problems
