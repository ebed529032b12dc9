"""One model across machines: agents in separate network namespaces, mutual TLS from the model's CA.

Three network namespaces stand for three machines, joined by veth pairs to a bridge in the root
namespace (the CLI's machine), addressed in a private /24:

  east  (ns1)  parleyd with a certificate from the model's CA, hosting web/0 and web/1
  west  (ns2)  parleyd with a certificate from the model's CA, hosting lb/0
  rogue (ns3)  parleyd with a certificate from ANOTHER model's CA (trusting both CAs) hosting
               lb/9, and a plaintext parleyd hosting lb/8

`parley up` (root namespace) places the model on east and west through the model's `hosts`; the
test checks that the model converges across the namespaces, that the traffic between them is
mutual TLS only, that neither rogue agent can relate to a web unit (nor can a web unit relate to
them), that a certificate of the model's CA allows only what its role and names say (a host's
certificate cannot change another host's agents, nor speak for an agent of another machine; an
operator's can) and that `parley down --purge` removes the units from the hosts.

Needs root (ip netns, veth, bridge). Everything made is named after this process's pid and is
removed at the end, on failure and on SIGTERM/SIGINT; what a killed run (SIGKILL) left behind is
removed by the next run. Every wait is bounded and polls a condition.

  sudo PYTHONPATH=build/python python3 tests/cli/netns_test.py --bin build/bin
"""

import json
import os
import re
import shutil
import socket
import ssl

import grpc

from netns import (CALL_TIMEOUT_S, PORT, Failure, Identity, Machines, Network, api, check, idle,
                   read, relation_view, run, say, sh, tls_args, wait_for)
from parley.v1 import agent_pb2
from parley.v1 import peer_pb2
from parley.v1 import peer_pb2_grpc

WEB = """name: web
provides:
  website: http
peers:
  cluster: web-peers
config:
  host: {type: string, default: 127.0.0.1}
  port: {type: int, default: 8000}
handlers:
  - name: publish
    when: [website.joined]
    on: [config.changed, website.joined, start]
    action:
      kind: builtin
      steps:
        - relation-set: {endpoint: website, key: host, value: "{{config.host}}"}
        - relation-set: {endpoint: website, key: port, value: "{{config.port}}"}
        - status: {state: active, message: "serving {{config.host}}:{{config.port}}"}
  - name: alone
    when_not: [website.joined]
    action:
      kind: builtin
      steps:
        - status: {state: active, message: "no clients"}
"""

PEERS = "name: web-peers\nrequired: {}\n"

LB = """name: lb
requires:
  backends: http
handlers:
  - name: wait
    when_not: [backends.ready]
    action:
      kind: builtin
      steps:
        - status: {state: waiting, message: "no backends"}
  - name: ready
    when: [backends.ready]
    action:
      kind: builtin
      steps:
        - status: {state: active, message: "backend {{fact.backends.remote.host}}:{{fact.backends.remote.port}}"}
"""


def denied(what, call, *parts):
    """Runs CALL, which must fail with PERMISSION_DENIED, its message holding every one of PARTS."""
    try:
        call()
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.PERMISSION_DENIED,
              "%s failed with %s: %s" % (what, e.code().name, e.details()))
        for part in parts:
            check(part in e.details(), "%s: %r is not in %r" % (what, part, e.details()))
        say("denied as expected: %s -> %s" % (what, e.details()))
        return e.details()
    raise Failure("%s was accepted" % what)


def refused(what, call, witness=None, reason=None):
    """Runs CALL, which must fail with UNAVAILABLE; returns the error's text. Without WITNESS, the
    error itself must be a failed TLS handshake; with one (the parleyd dialed, when the refusal is
    its own and the dialer only sees the connection closed), the witness's log must gain a
    handshake failure naming REASON."""
    seen = len(witness.handshake_failures()) if witness else 0
    try:
        call()
    except grpc.RpcError as e:
        text = "%s: %s" % (e.code().name, e.details())
    else:
        raise Failure("%s was accepted" % what)
    check(text.startswith("UNAVAILABLE"), "%s failed with %s" % (what, text))
    if witness is None:
        check(re.search(r"ssl handshake failed", text, re.I), "%s failed, but not on TLS: %s" % (what, text))
        say("refused as expected: %s -> %s" % (what, text))
        return text
    line = wait_for("%s to log the handshake it refused (%s)" % (witness.name, reason),
                    lambda: next((l for l in witness.handshake_failures()[seen:] if reason in l), None),
                    timeout=10)
    say("refused as expected: %s -> %s; %s logged: %s" % (what, text, witness.name, line))
    return text


def tls_probe(address, ca, cert_dir=None):
    """Completes a TLS handshake with the parleyd at ADDRESS (trusting CA, presenting the certificate
    in CERT_DIR if given) and opens HTTP/2, as `openssl s_client` would. Returns what the server
    answered: "http2" (its SETTINGS frame), "closed" (it hung up) or the TLS alert it sent."""
    host, port = address.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca.decode())
    ctx.set_alpn_protocols(["h2"])
    if cert_dir:
        ctx.load_cert_chain(os.path.join(cert_dir, "cert.pem"), os.path.join(cert_dir, "key.pem"))
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            try:
                # The client preface and an empty SETTINGS frame.
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
                answer = tls.recv(64)
            except ssl.SSLError as e:
                return "alert: %s" % e
            except ConnectionResetError:
                return "closed"
    if not answer:
        return "closed"
    return "http2" if len(answer) >= 9 and answer[3] == 4 else "answered %r" % answer


# ---------------------------------------------------------------------------------------------
# The test.

class Test(Machines):
    def __init__(self, opts):
        super().__init__(opts, 3)
        self.other_dir = os.path.join(self.tmp, "other-state")  # another model's, another CA

    def write_model(self):
        """The definitions and model.yaml in <tmp>/model; a copy in <tmp>/east-root stands for the
        model's files as installed on east (its model_root)."""
        model = os.path.join(self.tmp, "model")
        files = {"web/service.yaml": WEB, "web/interfaces/web-peers.yaml": PEERS,
                 "lb/service.yaml": LB,
                 "interfaces/http.yaml": read(os.path.join(self.source, "examples/interfaces/http.yaml")).decode()}
        for path, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(model, path)), exist_ok=True)
            with open(os.path.join(model, path), "w") as f:
                f.write(text)
        self.east_root = os.path.join(self.tmp, "east-root")
        shutil.copytree(model, self.east_root)
        # East's copy says where it runs from: proof that east was given its own paths.
        with open(os.path.join(self.east_root, "web/service.yaml"), "w") as f:
            f.write(WEB.replace('"serving ', '"serving from east-root '))
        with open(os.path.join(model, "model.yaml"), "w") as f:
            f.write("""interfaces: interfaces
hosts:
  east: {address: '%s', model_root: %s}
  west: {address: '%s'}
services:
  web:
    definition: web
    units: 2
    host: east
    config: {host: %s, port: 9000}
  lb:
    definition: lb
    host: west
relations:
  - [web:website, lb:backends]
""" % (self.east.address, self.east_root, self.west.address, self.net.address(0)))
        return model

    def run(self):
        Network.remove_stale()
        self.net.create()
        east_ip, west_ip, rogue_ip = (self.net.address(i) for i in range(3))

        # Certificates: the model's CA is made by the first `parley cert`; another model's CA
        # signs the rogue parleyd's.
        self.parley("cert", "east", "--ip", east_ip)
        self.parley("cert", "west", "--ip", west_ip)
        self.parley("cert", "rogue", "--ip", rogue_ip, model_dir=self.other_dir)
        self.parley("cert", "rogue-cli", "--operator", model_dir=self.other_dir)
        # A machine of the model that hosts none of its agents, and an operator's certificate.
        self.parley("cert", "intruder", "--ip", rogue_ip)
        self.parley("cert", "ops", "--operator")
        pki = os.path.join(self.model_dir, "pki")
        other_pki = os.path.join(self.other_dir, "pki")
        check(read(os.path.join(pki, "ca.pem")) != read(os.path.join(other_pki, "ca.pem")),
              "the two model directories share a CA")

        # The hosts read their certificates where `parley cert` wrote them, in the model directory
        # that down --purge deletes: a parleyd must not need its TLS files after it started.
        self.east = self.start("east", 0, PORT, tls_args(os.path.join(pki, "east")))
        self.west = self.start("west", 1, PORT, tls_args(os.path.join(pki, "west")))
        model = self.write_model()
        lb_dir, interfaces = os.path.join(model, "lb"), os.path.join(model, "interfaces")
        # The rogue parleyd trusts the model's CA as well as its own (a CA certificate is no
        # secret) but holds no certificate the model's CA signed.
        rogue_ca = os.path.join(self.tmp, "rogue-ca.pem")
        with open(rogue_ca, "wb") as f:
            f.write(read(os.path.join(other_pki, "ca.pem")) + read(os.path.join(pki, "ca.pem")))
        self.rogue = self.start("rogue", 2, PORT, tls_args(os.path.join(other_pki, "rogue"))[:2] + [
            "--tls_ca=" + rogue_ca, "--definitions=lb/9=" + lb_dir, "--interfaces=" + interfaces])
        self.plain = self.start("plain", 2, PORT + 1, ["--plaintext", "--definitions=lb/8=" + lb_dir,
                                                        "--interfaces=" + interfaces])
        for ns, d in ((1, self.east), (2, self.east), (0, self.west)):
            check(self.net.tcp_reachable(self.net.namespaces[ns], d.address.split(":")[0], PORT),
                  "no TCP from %s to %s: is bridged traffic filtered (br_netfilter and a FORWARD "
                  "policy of DROP)?" % (self.net.namespaces[ns], d.address))

        self.converges(model)
        # The rogue agents first: their refusals are witnessed by handshake failures in east's log,
        # which the direct probes below would add to.
        self.rogue_agents_are_refused()
        self.certificates_allow_what_their_role_says()
        self.transport_is_mutual_tls()
        self.down_purge_removes_units()

    def converges(self, model):
        up = self.parley("up", os.path.join(model, "model.yaml"), "--timeout", "120s")
        check("applied" in up.stderr, "parley up said: %s" % up.stderr)
        # Nothing was placed on the local machine: no local parleyd.
        check(not os.path.exists(os.path.join(self.model_dir, "parleyd.address")),
              "parley up started a local parleyd for a model placed on other hosts")
        self.parley("wait", "--timeout", "60s")
        # The CLI's certificate, kept for after down --purge deletes the model directory.
        self.cli = Identity(os.path.join(self.model_dir, "pki", "cli"))

        status = json.loads(self.parley("status", "--json").stdout)
        where = {u["name"]: u["address"] for s in status["services"] for u in s.get("units", [])}
        check(where == {"web/0": self.east.address, "web/1": self.east.address,
                        "lb/0": self.west.address}, "units placed at %s" % where)
        units = {u["agent"]: u for u in status["units"]}
        check(sorted(units) == ["lb/0", "web/0", "web/1"], "status lists %s" % sorted(units))
        for name, u in units.items():
            check(u.get("agent_state") == "AGENT_STATE_IDLE", "%s: %s" % (name, u))
            check(u.get("workload", {}).get("state") == "WORKLOAD_STATE_ACTIVE", "%s: %s" % (name, u))
        east_ip = self.net.address(0)
        check(units["lb/0"]["workload"].get("message") == "backend %s:9000" % east_ip,
              "lb/0 reports %r" % units["lb/0"]["workload"])
        for web in ("web/0", "web/1"):
            check(units[web]["workload"].get("message") == "serving from east-root %s:9000" % east_ip,
                  "%s reports %r" % (web, units[web]["workload"]))
        lb_rel = units["lb/0"].get("relations", [])
        check(len(lb_rel) == 1 and sorted(lb_rel[0].get("remote_units", [])) == ["web/0", "web/1"],
              "lb/0's relations: %s" % lb_rel)

        text = self.parley("status")
        check("parleyd  none on this machine" in text.stdout and "lost" not in text.stdout
              and not text.stderr, "parley status says:\n%s%s" % (text.stdout, text.stderr))

        data = json.loads(self.parley("relation-data", "lb/0", "backends", "--json").stdout)
        bags = {b["name"]: b.get("data", {}) for r in data.get("relations", []) for b in r.get("bags", [])}
        for web in ("web/0", "web/1"):
            check(bags.get("unit:" + web) == {"host": east_ip, "port": "9000"},
                  "lb/0 sees %s's data as %s" % (web, bags.get("unit:" + web)))
        say("converged: %s" % {n: u["workload"]["message"] for n, u in sorted(units.items())})

        # parley logs gathers the records of every host of the model.
        logs = self.parley("logs").stdout
        for unit in ("web/0", "web/1", "lb/0"):
            check(" %s: " % unit in logs, "parley logs shows nothing of %s:\n%s" % (unit, logs[-2000:]))

        # The agents talk across the namespaces: west holds a connection with east's parleyd.
        conns = sh("ip", "netns", "exec", self.net.namespaces[1], "ss", "-Htn", "state",
                   "established").stdout.replace("[::ffff:", "").replace("]", "")
        pairs = {tuple(a.rsplit(":", 1)[0] for a in line.split()[-2:]) for line in conns.splitlines()}
        check((self.net.address(1), east_ip) in pairs,
              "no connection between west and east in west's namespace:\n%s" % conns)

    def transport_is_mutual_tls(self):
        ok = api(self.east.address, self.cli).GetHost(agent_pb2.GetHostRequest(),
                                                      timeout=CALL_TIMEOUT_S)
        check(ok.pid == self.east.process.pid or os.environ.get("PARLEY_NETNS_WRAP"),
              "east answers as pid %d" % ok.pid)
        cli_dir = os.path.join(self.model_dir, "pki", "cli")
        rogue_cli_dir = os.path.join(self.other_dir, "pki", "rogue-cli")
        check(tls_probe(self.east.address, self.cli.ca, cli_dir) == "http2",
              "east does not speak HTTP/2 over TLS to the CLI's certificate")
        get_host = agent_pb2.GetHostRequest()
        for d in (self.east, self.west):
            # TLS probes: the handshake completes on the client's side (TLS 1.3), then the server,
            # which checks the client's certificate last, hangs up.
            for what, cert_dir, reason in (
                    ("no client certificate", None, "peer did not return a certificate"),
                    ("a certificate of another CA", rogue_cli_dir, "certificate verify failed")):
                seen = len(d.handshake_failures())
                got = tls_probe(d.address, self.cli.ca, cert_dir)
                check(got != "http2", "%s speaks HTTP/2 to a TLS client with %s" % (d.name, what))
                line = wait_for("%s to log the handshake it refused" % d.name, lambda: next(
                    (l for l in d.handshake_failures()[seen:] if reason in l), None), timeout=10)
                say("refused as expected: TLS to %s with %s -> %s; logged: %s" % (
                    d.name, what, got, line))
            # The agent API through gRPC.
            rogue_cli = Identity(rogue_cli_dir)
            refused("plaintext gRPC to %s" % d.name,
                    lambda: api(d.address).GetHost(get_host, timeout=CALL_TIMEOUT_S),
                    witness=d, reason="wrong version number")
            refused("gRPC without a client certificate to %s" % d.name,
                    lambda: api(d.address, self.cli, client_cert=False).GetHost(
                        get_host, timeout=CALL_TIMEOUT_S),
                    witness=d, reason="peer did not return a certificate")
            refused("gRPC with a certificate of another CA to %s" % d.name,
                    lambda: api(d.address, rogue_cli, trust=self.cli.ca).GetHost(
                        get_host, timeout=CALL_TIMEOUT_S),
                    witness=d, reason="certificate verify failed")

    def rogue_agents_are_refused(self):
        east = api(self.east.address, self.cli)
        rogue = api(self.rogue.address, Identity(os.path.join(self.other_dir, "pki", "rogue-cli")))
        plain = api(self.plain.address)
        webs = ("web/0", "web/1")
        before = {w: relation_view(east, w) for w in webs}
        check(all(len(v) == 2 for v in before.values()),  # the lb relation and the peers relation
              "web units' relations before: %s" % before)

        def relate(stub, agent, endpoint, remote, address, remote_endpoint):
            return lambda: stub.Relate(agent_pb2.RelateRequest(
                agent=agent, relation_id="intruder#%s" % agent, endpoint=endpoint,
                remote_agent=remote, remote_address=address, remote_endpoint=remote_endpoint),
                timeout=30)

        east_d = self.east
        for what, call, witness, reason in (
            # The rogue trusts east, but east does not trust the rogue: the rogue sees the
            # connection closed, east logs why.
            ("lb/9 (another CA) relating to web/0",
             relate(rogue, "lb/9", "backends", "web/0", self.east.address, "website"),
             east_d, "certificate verify failed"),
            ("lb/8 (plaintext) relating to web/0",
             relate(plain, "lb/8", "backends", "web/0", self.east.address, "website"),
             east_d, "wrong version number"),
            # East dials: its own handshake fails, and says so.
            ("web/0 relating to lb/9 (another CA)",
             relate(east, "web/0", "website", "lb/9", self.rogue.address, "backends"), None, None),
            ("web/1 relating to lb/9 (another CA)",
             relate(east, "web/1", "website", "lb/9", self.rogue.address, "backends"), None, None),
            ("web/0 relating to lb/8 (plaintext)",
             relate(east, "web/0", "website", "lb/8", self.plain.address, "backends"), None, None),
        ):
            refused(what, call, witness, reason)

        for stub, unit in ((rogue, "lb/9"), (plain, "lb/8")):
            wait_for("%s idle" % unit, lambda: idle(stub, unit), timeout=30)
            check(relation_view(stub, unit) == {}, "%s has relations: %s" % (unit, relation_view(stub, unit)))
        for w in webs:
            wait_for("%s idle" % w, lambda: idle(east, w), timeout=30)
            after = relation_view(east, w)
            check(after == before[w], "%s's relations changed:\n%s\n->\n%s" % (w, before[w], after))
            check(not any(u.startswith("lb/8") or u.startswith("lb/9")
                          for remote, _ in after.values() for u in remote), "%s: %s" % (w, after))

    def certificates_allow_what_their_role_says(self):
        pki = os.path.join(self.model_dir, "pki")
        east_cert, intruder, ops = (Identity(os.path.join(pki, n)) for n in ("east", "intruder", "ops"))
        west = api(self.west.address, east_cert)
        before = relation_view(api(self.west.address, self.cli), "lb/0")
        # East's certificate reaches west's agent API, for what probes need only.
        check(west.GetHost(agent_pb2.GetHostRequest(), timeout=CALL_TIMEOUT_S).address == self.west.address,
              "west's GetHost with east's certificate")
        check(idle(west, "lb/0"), "lb/0 busy")
        needs = "needs an operator certificate"
        denied("east's certificate: SetConfig on west's lb/0",
               lambda: west.SetConfig(agent_pb2.SetConfigRequest(agent="lb/0", set={"x": "1"}),
                                      timeout=CALL_TIMEOUT_S), "Agent.SetConfig", needs, "role host")
        denied("east's certificate: AddAgent on west",
               lambda: west.AddAgent(agent_pb2.AddAgentRequest(), timeout=CALL_TIMEOUT_S),
               "Agent.AddAgent", needs)
        denied("east's certificate: RemoveAgent lb/0 on west",
               lambda: west.RemoveAgent(agent_pb2.RemoveAgentRequest(agent="lb/0"), timeout=CALL_TIMEOUT_S),
               "Agent.RemoveAgent", needs)
        denied("east's certificate: lb/0's relation data on west",
               lambda: west.GetRelationData(agent_pb2.GetRelationDataRequest(agent="lb/0"),
                                            timeout=CALL_TIMEOUT_S), "Agent.GetRelationData", needs)
        denied("east's certificate: Relate lb/0 on west",
               lambda: west.Relate(agent_pb2.RelateRequest(
                   agent="lb/0", relation_id="intruder#1", endpoint="backends", remote_agent="web/9",
                   remote_address=self.east.address, remote_endpoint="website"), timeout=CALL_TIMEOUT_S),
               "Agent.Relate", needs)

        # A certificate of the model's CA for another machine cannot speak for web/0, which west
        # knows at east, nor can east's point lb/0's traffic for web/0 elsewhere.
        rogue_address = "%s:%d" % (self.net.address(2), PORT)
        for who, identity in (("intruder's", intruder), ("east's", east_cert)):
            creds = grpc.ssl_channel_credentials(root_certificates=identity.ca, private_key=identity.key,
                                                 certificate_chain=identity.cert)
            peer = peer_pb2_grpc.PeerStub(grpc.secure_channel(self.west.address, creds))
            denied("%s certificate: RequestConnect to lb/0 as web/0 at %s" % (who, rogue_address),
                   lambda: peer.RequestConnect(peer_pb2.RequestConnectRequest(
                       agent="lb/0", from_agent="web/0", from_address=rogue_address), timeout=CALL_TIMEOUT_S),
                   "web/0", "refuses")
        after = relation_view(api(self.west.address, self.cli), "lb/0")
        check(after == before, "lb/0's relations changed:\n%s\n->\n%s" % (before, after))

        # An operator's certificate from `parley cert --operator` may read agents' data.
        data = api(self.west.address, ops).GetRelationData(
            agent_pb2.GetRelationDataRequest(agent="lb/0"), timeout=CALL_TIMEOUT_S)
        check(len(data.relations) == 1, "lb/0's relation data through the operator's certificate: %s" % data)
        say("host certificates are held to probing and to their own addresses; an operator's may read")

    def down_purge_removes_units(self):
        listed = {}
        for d in (self.east, self.west):
            resp = api(d.address, self.cli).ListAgents(agent_pb2.ListAgentsRequest(),
                                                       timeout=CALL_TIMEOUT_S)
            listed[d.name] = sorted(a.agent for a in resp.agents)
        check(listed == {"east": ["web/0", "web/1"], "west": ["lb/0"]}, "hosted: %s" % listed)
        self.parley("down", "--purge")
        check(not os.path.exists(self.model_dir), "down --purge left %s" % self.model_dir)
        for d in (self.east, self.west):
            check(d.process.poll() is None, "%s's parleyd, run by others, exited (%s) in down --purge"
                  % (d.name, d.process.returncode))
            resp = api(d.address, self.cli).ListAgents(agent_pb2.ListAgentsRequest(),
                                                       timeout=CALL_TIMEOUT_S)
            check(len(resp.agents) == 0, "%s still hosts %s" % (d.name, [a.agent for a in resp.agents]))
        say("down --purge removed the units from east and west")


if __name__ == "__main__":
    run(__doc__.split("\n")[0], Test)
