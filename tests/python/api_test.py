"""The agent API from Python, against real parleyd processes.

Two processes: web/0 (a `proposer`, which proposes its `port` config to whatever it relates to)
and db/0 (an `acceptor`, which answers ports below 1024 with port + 8000 and accepts others). The
test relates them through the API, changes web/0's config and follows the negotiation through
facts, status and relation data, all with the stubs generated into build/python.
"""

import os
import shutil
import sys
import tempfile
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import parley_testing as pt  # noqa: E402

from parley.v1 import agent_pb2  # noqa: E402
from parley.v1 import kb_pb2  # noqa: E402

T = pt.CALL_TIMEOUT_S
WEB = "web/0"
DB = "db/0"


class AgentApiTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="parley-api-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)  # also when setUp fails
        self.web = self.db = None
        self.web = pt.Parleyd.start(f"{WEB}=proposer", workdir=os.path.join(self.dir, "web"))
        try:
            self.db = pt.Parleyd.start(f"{DB}=acceptor", workdir=os.path.join(self.dir, "db"))
        except Exception:
            self.web.stop()  # tearDown does not run when setUp fails
            raise
        self.model = [(self.web, WEB), (self.db, DB)]

    def tearDown(self):
        codes = [p.stop() for p in (self.web, self.db) if p is not None]
        if pt.test_failed(self) or codes != [0, 0] or os.environ.get("PARLEY_TEST_LOG"):
            pt.dump_logs([self.web, self.db])
        self.assertEqual(codes, [0, 0], "parleyd exit codes on SIGTERM")

    def relate(self):
        return self.web.api.Relate(
            agent_pb2.RelateRequest(agent=WEB, relation_id="negotiate:1", endpoint="negotiate",
                                    remote_agent=DB, remote_address=self.db.address,
                                    remote_endpoint="negotiate"),
            timeout=T)

    def bags(self, p, agent, endpoint):
        """relation id -> bag name -> data, from GetRelationData."""
        r = p.api.GetRelationData(agent_pb2.GetRelationDataRequest(agent=agent,
                                                                   endpoint=endpoint), timeout=T)
        return {rel.relation_id: {b.name: dict(b.data) for b in rel.bags} for rel in r.relations}

    def test_list_status_relate_config_and_relation_data(self):
        # ListAgents: each process hosts exactly its agent.
        listed = self.web.api.ListAgents(agent_pb2.ListAgentsRequest(), timeout=T)
        self.assertEqual([(a.agent, a.service) for a in listed.agents], [(WEB, "web")])
        listed = self.db.api.ListAgents(agent_pb2.ListAgentsRequest(), timeout=T)
        self.assertEqual([(a.agent, a.service) for a in listed.agents], [(DB, "db")])

        # GetStatus before relating: install/start ran, nothing related yet.
        pt.wait_settled(self.model)
        status = self.web.api.GetStatus(agent_pb2.GetStatusRequest(agent=WEB), timeout=T)
        self.assertEqual(status.agent, WEB)
        self.assertEqual(status.service, "web")
        self.assertEqual(status.agent_state, agent_pb2.AGENT_STATE_IDLE)
        self.assertEqual(status.inbox_depth, 0)
        self.assertEqual(len(status.relations), 0)
        self.assertGreater(status.last_run, 0)

        # An unknown agent is NOT_FOUND, not an empty answer.
        with self.assertRaises(grpc.RpcError) as e:
            self.web.api.GetStatus(agent_pb2.GetStatusRequest(agent="nope/0"), timeout=T)
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)

        # Relate across the two processes. The default proposal (80) is countered with 8080,
        # which web/0 adopts and proposes again; db/0 accepts it as it is.
        self.assertEqual(self.relate().interface, "negotiate")
        pt.wait_settled(self.model)
        self.assertEqual(pt.facts(self.web, WEB).get("agreed"), "8080")
        self.assertEqual(pt.facts(self.db, DB).get("port"), "8080")
        status = self.web.api.GetStatus(agent_pb2.GetStatusRequest(agent=WEB), timeout=T)
        self.assertEqual(status.workload.state, kb_pb2.WORKLOAD_STATE_ACTIVE)
        self.assertEqual(status.workload.message, "agreed on port 8080")
        self.assertEqual([(r.relation_id, r.endpoint, r.remote_service, list(r.remote_units))
                          for r in status.relations],
                         [("negotiate:1", "negotiate", "db", [DB])])

        # Relating the same units again is idempotent: it succeeds and changes nothing (a
        # relation id reused for another endpoint or service is ALREADY_EXISTS, see
        # peer_protocol_test).
        self.assertEqual(self.relate().interface, "negotiate")
        status = self.web.api.GetStatus(agent_pb2.GetStatusRequest(agent=WEB), timeout=T)
        self.assertEqual([(r.relation_id, list(r.remote_units)) for r in status.relations],
                         [("negotiate:1", [DB])])

        # SetConfig fires config.changed; the new proposal converges on both sides.
        changed = self.web.api.SetConfig(
            agent_pb2.SetConfigRequest(agent=WEB, set={"port": "9000"}), timeout=T)
        self.assertGreater(changed.event_id, 0)
        pt.wait_settled(self.model)
        config = self.web.api.GetConfig(agent_pb2.GetConfigRequest(agent=WEB), timeout=T)
        self.assertEqual(dict(config.config), {"port": "9000"})
        # Setting the value it already has changes nothing and fires nothing.
        unchanged = self.web.api.SetConfig(
            agent_pb2.SetConfigRequest(agent=WEB, set={"port": "9000"}), timeout=T)
        self.assertEqual(unchanged.event_id, 0)

        # GetFacts on both sides.
        web_facts = pt.facts(self.web, WEB)
        self.assertEqual(web_facts.get("proposed"), "9000")
        self.assertEqual(web_facts.get("agreed"), "9000")
        self.assertEqual(pt.facts(self.db, DB).get("port"), "9000")
        status = self.web.api.GetStatus(agent_pb2.GetStatusRequest(agent=WEB), timeout=T)
        self.assertEqual(status.workload.message, "agreed on port 9000")

        # GetRelationData: each side sees what the other published, under the remote unit's bag.
        db_view = self.bags(self.db, DB, "negotiate")
        self.assertEqual(list(db_view), ["negotiate:1"])
        self.assertEqual(db_view["negotiate:1"].get(f"unit:{WEB}"), {"proposal": "9000"})
        self.assertEqual(db_view["negotiate:1"].get("local-unit"),
                         {"accepted": "9000", "answer_to": "9000"})
        web_view = self.bags(self.web, WEB, "negotiate")
        self.assertEqual(web_view["negotiate:1"].get(f"unit:{DB}"),
                         {"accepted": "9000", "answer_to": "9000"})
        self.assertEqual(web_view["negotiate:1"].get("local-unit"), {"proposal": "9000"})

        # GetTraces: the newest run of db/0 applied web/0's change and committed.
        traces = self.db.api.GetTraces(agent_pb2.GetTracesRequest(agent=DB, last=1), timeout=T)
        self.assertEqual(len(traces.traces), 1)
        self.assertEqual(traces.traces[0].result, kb_pb2.Trace.RESULT_COMMITTED)
        self.assertEqual(traces.traces[0].trigger.name, "negotiate.changed")

        # RemoveAgent: web/0 dies first (its stop, its departure, acknowledged by db/0), then is
        # removed; db/0's relation has lost its remote unit.
        self.assertEqual(status.stage, kb_pb2.UNIT_STAGE_ACTIVE)
        removed = self.web.api.RemoveAgent(
            agent_pb2.RemoveAgentRequest(agent=WEB, grace_seconds=30), timeout=90)
        self.assertEqual(removed.stage, kb_pb2.UNIT_STAGE_DEAD)
        self.assertLess(removed.dying_ms, 30000)
        listed = self.web.api.ListAgents(agent_pb2.ListAgentsRequest(), timeout=T)
        self.assertEqual(list(listed.agents), [])
        pt.wait_settled([(self.db, DB)])
        status = self.db.api.GetStatus(agent_pb2.GetStatusRequest(agent=DB), timeout=T)
        self.assertEqual([list(r.remote_units) for r in status.relations], [])

    def test_watch_status_sees_the_config_change_converge(self):
        self.relate()
        pt.wait_settled(self.model)
        self.web.api.SetConfig(agent_pb2.SetConfigRequest(agent=WEB, set={"port": "7000"}),
                               timeout=T)
        # WatchStatus streams the status now and after every change: the proposal is waited on,
        # then agreed once db/0 answered.
        stream = self.web.api.WatchStatus(agent_pb2.GetStatusRequest(agent=WEB), timeout=T)
        seen = []
        try:
            for s in stream:
                seen.append(s.workload.message)
                if s.workload.message == "agreed on port 7000":
                    break
        except grpc.RpcError as e:
            self.fail(f"WatchStatus ended with {e.code()} after {seen}")
        finally:
            stream.cancel()
        self.assertEqual(seen[-1], "agreed on port 7000")


if __name__ == "__main__":
    unittest.main(verbosity=2)
