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

import argparse
import ctypes
import json
import os
import re
import shutil
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

import grpc

from parley.v1 import agent_pb2
from parley.v1 import agent_pb2_grpc
from parley.v1 import peer_pb2
from parley.v1 import peer_pb2_grpc

T0 = time.monotonic()
PREFIX = "parley-netns-"  # namespaces: parley-netns-<pid>-<n>
PORT = 7000
CALL_TIMEOUT_S = 10

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


def say(msg):
    print("[%6.1fs] %s" % (time.monotonic() - T0, msg), flush=True)


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def wait_for(what, fn, timeout=60.0, interval=0.1):
    """Polls FN until it returns something truthy; its last value or exception explains a timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = fn()
            if value:
                return value
            last = value
        except Exception as e:  # noqa: BLE001 - reported on timeout
            last = "%s: %s" % (type(e).__name__, e)
        if time.monotonic() > deadline:
            raise Failure("timed out after %.0fs waiting for %s (last: %r)" % (timeout, what, last))
        time.sleep(interval)


def sh(*argv, ok=True, timeout=30):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if ok and p.returncode != 0:
        raise Failure("%s failed (%d): %s%s" % (" ".join(argv), p.returncode, p.stdout, p.stderr))
    return p


def _die_with_parent():
    # prctl(PR_SET_PDEATHSIG, SIGKILL): a daemon dies with the test, even if the test is killed.
    # `ip netns exec` execs the daemon in the same process, so the setting carries over.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


# ---------------------------------------------------------------------------------------------
# The network.

class Network:
    """N namespaces on a bridge in the root namespace, in 10.213.<x>.0/24: namespace i has .i, the
    root namespace .254. remove() undoes whatever was made, in any state."""

    def __init__(self, count):
        self.tag = str(os.getpid())
        self.bridge = "pb" + self.tag
        self.namespaces = ["%s%s-%d" % (PREFIX, self.tag, i + 1) for i in range(count)]
        self.veths = ["pv%sn%d" % (self.tag, i + 1) for i in range(count)]
        self.subnet = None
        self.made = []  # ("netns", name) / ("link", name), in creation order

    @staticmethod
    def remove_stale():
        """Removes namespaces, links and temporary directories of earlier runs whose process is gone
        (killed by SIGKILL)."""
        listed = sh("ip", "netns", "list", ok=False).stdout
        for name in re.findall(r"^(%s(\d+)-\d+)" % re.escape(PREFIX), listed, re.M):
            if not _pid_alive(int(name[1])):
                sh("ip", "netns", "delete", name[0], ok=False)
        tmp = tempfile.gettempdir()
        for name in os.listdir(tmp):
            m = re.match(r"%s(\d+)-" % re.escape(PREFIX), name)
            if m and not _pid_alive(int(m.group(1))):
                shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
        links = sh("ip", "-o", "link", "show", ok=False).stdout
        for name, pid in re.findall(r"^\d+: (p[bv](\d+)\w*)[@:]", links, re.M):
            if not _pid_alive(int(pid)):
                sh("ip", "link", "delete", name, ok=False)

    def _free_subnet(self):
        taken = sh("ip", "-4", "-o", "addr", "show").stdout + sh("ip", "-4", "route", "show").stdout
        start = os.getpid() % 250
        for i in range(250):
            x = 1 + (start + i) % 250
            if "10.213.%d." % x not in taken:
                return "10.213.%d" % x
        raise Failure("no free 10.213.x.0/24 subnet")

    def address(self, i):
        """The address of namespace i (0-based)."""
        return "%s.%d" % (self.subnet, i + 1)

    def create(self):
        self.subnet = self._free_subnet()
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self.made.append(("link", self.bridge))
        sh("ip", "addr", "add", "%s.254/24" % self.subnet, "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for i, (ns, veth) in enumerate(zip(self.namespaces, self.veths)):
            sh("ip", "netns", "add", ns)
            self.made.append(("netns", ns))
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "p")
            self.made.append(("link", veth))
            sh("ip", "link", "set", veth + "p", "netns", ns)
            sh("ip", "link", "set", veth, "master", self.bridge, "up")
            inside = ["ip", "netns", "exec", ns, "ip"]
            sh(*inside, "link", "set", "lo", "up")
            sh(*inside, "link", "set", veth + "p", "name", "eth0")
            sh(*inside, "addr", "add", "%s/24" % self.address(i), "dev", "eth0")
            sh(*inside, "link", "set", "eth0", "up")
        say("namespaces %s on bridge %s, %s.0/24" % (", ".join(self.namespaces), self.bridge,
                                                     self.subnet))

    def remove(self):
        for kind, name in reversed(self.made):
            if kind == "netns":
                sh("ip", "netns", "delete", name, ok=False)
            else:
                sh("ip", "link", "delete", name, ok=False)
        self.made = []

    def tcp_reachable(self, ns, address, port):
        """Whether a TCP connection from namespace NS to ADDRESS:PORT is accepted."""
        code = "import socket; socket.create_connection((%r, %d), timeout=2).close()" % (address, port)
        return sh("ip", "netns", "exec", ns, sys.executable, "-c", code, ok=False).returncode == 0


# ---------------------------------------------------------------------------------------------
# Processes.

class Daemon:
    """A parleyd in a namespace."""

    def __init__(self, name, workdir, ns, listen, args, parleyd):
        self.name = name
        self.listen = listen
        self.workdir = os.path.join(workdir, name)
        os.makedirs(self.workdir)
        self.log_path = os.path.join(self.workdir, "parleyd.log")
        address_file = os.path.join(self.workdir, "address")
        # PARLEY_NETNS_WRAP: a command the parleyds run under, e.g. "gdb -batch -ex run -ex bt --args".
        argv = ["ip", "netns", "exec", ns] + shlex.split(os.environ.get("PARLEY_NETNS_WRAP", "")) + [parleyd,
                "--data=" + os.path.join(self.workdir, "kb"),
                "--state_dir=" + os.path.join(self.workdir, "units"),
                "--listen=" + listen, "--address_file=" + address_file] + args
        with open(self.log_path, "w") as log:
            log.write("=== " + " ".join(argv) + "\n")
            log.flush()
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.address = None
        self._address_file = address_file

    def wait_listening(self):
        name, address_file = self.name, self._address_file

        def listening():
            check(self.process.poll() is None,
                  "parleyd %s exited with %s:\n%s" % (name, self.process.returncode, self.log_tail()))
            with open(address_file) as f:
                return f.read().strip()
        self.address = wait_for("parleyd %s to listen" % name, listening, timeout=30, interval=0.02)
        check(self.address == self.listen,
              "parleyd %s advertises %s, not %s" % (name, self.address, self.listen))

    def handshake_failures(self):
        """The TLS handshake failures gRPC logged in this parleyd, oldest first: the server's only
        account of a peer it refused."""
        try:
            with open(self.log_path) as f:
                return [line[line.index("Handshake failed"):].strip()
                        for line in f if "Handshake failed" in line]
        except OSError:
            return []

    def log_tail(self, lines=30):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def read(path):
    with open(path, "rb") as f:
        return f.read()


class Identity:
    """A certificate, its key and the CA it trusts, read into memory (down --purge deletes them)."""

    def __init__(self, directory):
        self.cert = read(os.path.join(directory, "cert.pem"))
        self.key = read(os.path.join(directory, "key.pem"))
        self.ca = read(os.path.join(directory, "ca.pem"))


def api(address, identity=None, trust=None, client_cert=True):
    """An agent API stub for ADDRESS: plaintext without IDENTITY; else TLS trusting TRUST (default
    the identity's CA), presenting the identity's certificate when CLIENT_CERT."""
    if identity is None:
        channel = grpc.insecure_channel(address)
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=trust or identity.ca,
            private_key=identity.key if client_cert else None,
            certificate_chain=identity.cert if client_cert else None)
        channel = grpc.secure_channel(address, creds)
    return agent_pb2_grpc.AgentStub(channel)


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


def relation_view(stub, unit):
    """What a unit knows of its relations: {relation id: (remote units, {bag: data})}."""
    status = stub.GetStatus(agent_pb2.GetStatusRequest(agent=unit), timeout=CALL_TIMEOUT_S)
    data = stub.GetRelationData(agent_pb2.GetRelationDataRequest(agent=unit), timeout=CALL_TIMEOUT_S)
    bags = {r.relation_id: {b.name: dict(b.data) for b in r.bags} for r in data.relations}
    return {r.relation_id: (sorted(r.remote_units), bags.get(r.relation_id, {}))
            for r in status.relations}


def idle(stub, unit):
    return stub.CheckIdle(agent_pb2.CheckIdleRequest(agent=unit), timeout=CALL_TIMEOUT_S).idle


# ---------------------------------------------------------------------------------------------
# The test.

class Test:
    def __init__(self, opts):
        self.bin = os.path.abspath(opts.bin)
        self.source = os.path.abspath(opts.source)
        self.parley_bin = os.path.join(self.bin, "parley")
        self.parleyd = os.path.join(self.bin, "parleyd")
        for b in (self.parley_bin, self.parleyd, os.path.join(self.bin, "parley-hook")):
            check(os.access(b, os.X_OK), "%s is missing (build parley parleyd parley-hook)" % b)
        self.tmp = tempfile.mkdtemp(prefix="%s%d-" % (PREFIX, os.getpid()))
        # The units' programs run as the unprivileged user `parley`: it must reach their state dirs.
        os.chmod(self.tmp, 0o755)
        self.net = Network(3)
        self.daemons = []
        self.model_dir = os.path.join(self.tmp, "state")        # the model's PARLEY_MODEL_DIR
        self.other_dir = os.path.join(self.tmp, "other-state")  # another model's, another CA

    def parley(self, *argv, model_dir=None, ok=True, timeout=240):
        say("$ parley " + " ".join(argv))
        env = dict(os.environ, PARLEY_MODEL_DIR=model_dir or self.model_dir)
        p = subprocess.run([self.parley_bin, *argv], env=env, capture_output=True, text=True,
                           timeout=timeout)
        if ok and p.returncode != 0:
            raise Failure("parley %s failed (%d):\n%s%s" % (" ".join(argv), p.returncode, p.stdout,
                                                          p.stderr))
        return p

    def start(self, name, ns_index, port, args):
        d = Daemon(name, self.tmp, self.net.namespaces[ns_index],
                   "%s:%d" % (self.net.address(ns_index), port), args, self.parleyd)
        self.daemons.append(d)
        d.wait_listening()
        return d

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

        def tls(d):
            return ["--tls_cert=%s/cert.pem" % d, "--tls_key=%s/key.pem" % d, "--tls_ca=%s/ca.pem" % d]

        # The hosts read their certificates where `parley cert` wrote them, in the model directory
        # that down --purge deletes: a parleyd must not need its TLS files after it started.
        self.east = self.start("east", 0, PORT, tls(os.path.join(pki, "east")))
        self.west = self.start("west", 1, PORT, tls(os.path.join(pki, "west")))
        model = self.write_model()
        lb_dir, interfaces = os.path.join(model, "lb"), os.path.join(model, "interfaces")
        # The rogue parleyd trusts the model's CA as well as its own (a CA certificate is no
        # secret) but holds no certificate the model's CA signed.
        rogue_ca = os.path.join(self.tmp, "rogue-ca.pem")
        with open(rogue_ca, "wb") as f:
            f.write(read(os.path.join(other_pki, "ca.pem")) + read(os.path.join(pki, "ca.pem")))
        self.rogue = self.start("rogue", 2, PORT, tls(os.path.join(other_pki, "rogue"))[:2] + [
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

    def cleanup(self, failed):
        for d in self.daemons:
            exited = d.process.poll()
            d.stop()
            if failed:
                sys.stderr.write("---- parleyd %s (%s)%s\n%s" % (
                    d.name, d.listen, "" if exited is None else ", exited (%d) before the end" % exited,
                    d.log_tail(60)))
        self.net.remove()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _interrupted(signum, frame):
    raise Failure("interrupted by signal %d" % signum)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", default=os.environ.get("PARLEY_BIN", ""),
                   help="directory holding parley, parleyd and parley-hook (env PARLEY_BIN)")
    p.add_argument("--source", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."),
                   help="the source tree (for examples/interfaces)")
    opts = p.parse_args()
    if os.geteuid() != 0:
        print("SKIP: needs root for network namespaces", flush=True)
        sys.exit(77)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _interrupted)
    test = None
    failed = True
    try:
        test = Test(opts)
        test.run()
        failed = False
    except Failure as e:
        say("FAIL: %s" % e)
    finally:
        # Cleanup must finish even if another signal arrives.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if test is not None:
            test.cleanup(failed)
    if failed:
        sys.exit(1)
    say("PASS")


if __name__ == "__main__":
    main()
