"""Machines as network namespaces, for tests of models that span hosts (netns_test.py,
netns_faults_test.py).

Network: N namespaces joined by veth pairs to a bridge in the root namespace (the CLI's machine);
LinkFaults: faults on the links between them (loss, blackhole, one-way loss, delay); Daemon: a
parleyd in a namespace; Identity/api: TLS clients of the model's CA; run(): the main of such a
test (root check, cleanup on exit and on SIGTERM/SIGINT/SIGHUP).

Everything made is named after the test's pid and removed at the end, on failure and on signals;
what a killed run (SIGKILL) left behind is removed by the next run (Network.remove_stale). Every
wait is bounded and polls a condition.
"""

import ctypes
import os
import re
import shutil
import shlex
import signal
import subprocess
import sys
import tempfile
import time

import grpc

from parley.v1 import agent_pb2
from parley.v1 import agent_pb2_grpc

T0 = time.monotonic()
PREFIX = "parley-netns-"  # namespaces: parley-netns-<pid>-<n>
PORT = 7000
CALL_TIMEOUT_S = 10

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
# Link faults.

_CLONE_NEWNET = 0x40000000


def _enter_namespace(name):
    """Moves the calling thread (only it) into network namespace NAME: sockets it creates then
    live there."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open("/var/run/netns/" + name, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "setns(%s): %s" % (name, os.strerror(err)))
    finally:
        os.close(fd)


class DelayProxy:
    """A TCP relay inside namespace NS, in front of the parleyd listening at ADDRESS:PORT there:
    connections that other namespaces open to it are redirected to the relay (iptables REDIRECT
    in NS's PREROUTING), which passes the bytes on both ways after `delay` ± `jitter` seconds,
    in order. The kernel here may lack sch_netem (tc qdisc ... netem), so delay is added here;
    loss is dropped by iptables (LinkFaults). With no delay set, bytes pass at once."""

    def __init__(self, ns, address, port, relay_port, sources):
        import random
        import socket
        import threading
        self._random, self._socket, self._threading = random.Random(os.getpid()), socket, threading
        self.ns, self.address, self.port, self.relay_port = ns, address, port, relay_port
        self.delay, self.jitter = 0.0, 0.0
        self.connections = 0
        self.held = 0  # chunks held back by a delay
        self._closing = threading.Event()
        self._listener = None
        ready = threading.Event()
        self._error = []
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        check(ready.wait(10), "the delay relay in %s did not start" % ns)
        check(not self._error, "the delay relay in %s: %s" % (ns, self._error))
        for source in sources:
            sh("ip", "netns", "exec", ns, "iptables", "-t", "nat", "-A", "PREROUTING", "-s", source,
               "-d", address, "-p", "tcp", "--dport", str(port), "-j", "REDIRECT", "--to-ports",
               str(relay_port))

    def set(self, delay, jitter=0.0):
        self.delay, self.jitter = delay, jitter

    def close(self):
        self._closing.set()
        if self._listener is not None:
            self._listener.close()

    def _serve(self, ready):
        try:
            _enter_namespace(self.ns)
            s = self._socket.socket(self._socket.AF_INET, self._socket.SOCK_STREAM)
            s.setsockopt(self._socket.SOL_SOCKET, self._socket.SO_REUSEADDR, 1)
            s.bind((self.address, self.relay_port))
            s.listen(64)
            self._listener = s
        except OSError as e:
            self._error.append(str(e))
            ready.set()
            return
        ready.set()
        while not self._closing.is_set():
            try:
                client, _ = s.accept()
                upstream = self._socket.create_connection((self.address, self.port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                if self._closing.is_set():
                    return
                try:
                    client.close()
                except (OSError, UnboundLocalError):
                    pass
                continue
            self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        """Reads SRC, writes each chunk to DST at its release time (never before an earlier
        chunk's); a closed side closes the other."""
        import collections
        queue = collections.deque()
        cond = self._threading.Condition()
        done = [False]

        def writer():
            while True:
                with cond:
                    while not queue and not done[0]:
                        cond.wait()
                    if not queue:
                        break
                    at, data = queue.popleft()
                pause = at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)  # the injected delay itself
                try:
                    dst.sendall(data)
                except OSError:
                    break
            for sock in (src, dst):
                try:
                    sock.shutdown(self._socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        self._threading.Thread(target=writer, daemon=True).start()
        last = 0.0
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            d = self.delay + (self._random.uniform(-self.jitter, self.jitter) if self.jitter else 0)
            last = max(last, time.monotonic() + max(d, 0.0))
            if d > 0:
                self.held += 1
            with cond:
                queue.append((last, data))
                cond.notify()
        with cond:
            done[0] = True
            cond.notify()


class LinkFaults:
    """Faults on the links between the namespaces of NET: each directed link (from namespace i to
    namespace j) can lose a fraction of its packets or all of them (iptables rules on j's INPUT
    for i's address: the packets cross the link and vanish on arrival, as on a lossy wire), and
    every connection between namespaces can be delayed (DelayProxy). heal() undoes every fault.
    The root namespace (the CLI's machine) is never impaired."""

    CHAIN = "PARLEY_FAULT"

    def __init__(self, net, port, relay_port):
        self.net = net
        self.proxies = []
        for j, ns in enumerate(net.namespaces):
            sh("ip", "netns", "exec", ns, "iptables", "-N", self.CHAIN)
            sh("ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-j", self.CHAIN)
            others = [net.address(i) for i in range(len(net.namespaces)) if i != j]
            self.proxies.append(DelayProxy(ns, net.address(j), port, relay_port, others))

    @staticmethod
    def check_tools():
        """Fails naming the Debian package of a missing tool."""
        for tool, package in (("ip", "iproute2"), ("ss", "iproute2"), ("iptables", "iptables")):
            check(shutil.which(tool), "%s is missing: install the Debian package %s (tools/setup)"
                  % (tool, package))

    def lose(self, src, dst, fraction=1.0):
        """Drops FRACTION (1.0: all) of the packets from namespace SRC to namespace DST."""
        rule = ["-s", self.net.address(src)]
        if fraction < 1.0:
            rule += ["-m", "statistic", "--mode", "random", "--probability", "%.3f" % fraction]
        sh("ip", "netns", "exec", self.net.namespaces[dst], "iptables", "-A", self.CHAIN, *rule,
           "-j", "DROP")

    def lose_between(self, group_a, group_b, fraction=1.0):
        """Drops FRACTION of the packets both ways between every namespace of GROUP_A and every
        one of GROUP_B."""
        for a in group_a:
            for b in group_b:
                self.lose(a, b, fraction)
                self.lose(b, a, fraction)

    def delay(self, seconds, jitter=0.0):
        for p in self.proxies:
            p.set(seconds, jitter)

    def heal(self):
        for ns in self.net.namespaces:
            sh("ip", "netns", "exec", ns, "iptables", "-F", self.CHAIN)
        self.delay(0.0)

    def close(self):
        for p in self.proxies:
            p.close()


# ---------------------------------------------------------------------------------------------
# A test of machines.

class Machines:
    """What a test of a model across namespaces holds: the binaries, a temporary directory, the
    network, the parleyds started and the CLI (run in the root namespace)."""

    def __init__(self, opts, count):
        self.bin = os.path.abspath(opts.bin)
        self.source = os.path.abspath(opts.source)
        self.parley_bin = os.path.join(self.bin, "parley")
        self.parleyd = os.path.join(self.bin, "parleyd")
        for b in (self.parley_bin, self.parleyd, os.path.join(self.bin, "parley-hook")):
            check(os.access(b, os.X_OK), "%s is missing (build parley parleyd parley-hook)" % b)
        self.tmp = tempfile.mkdtemp(prefix="%s%d-" % (PREFIX, os.getpid()))
        # The units' programs run as the unprivileged user `parley`: it must reach their state dirs.
        os.chmod(self.tmp, 0o755)
        self.net = Network(count)
        self.daemons = []
        self.model_dir = os.path.join(self.tmp, "state")  # the model's PARLEY_MODEL_DIR

    def parley(self, *argv, model_dir=None, ok=True, timeout=240, quiet=False):
        if not quiet:
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

    def cleanup(self, failed):
        for d in self.daemons:
            exited = d.process.poll()
            d.stop()
            if failed or os.environ.get("PARLEY_TEST_LOG"):
                # PARLEY_TEST_LOG=1: the whole log, even when the test passed.
                sys.stderr.write("---- parleyd %s (%s)%s\n%s" % (
                    d.name, d.listen, "" if exited is None else ", exited (%d) before the end" % exited,
                    d.log_tail(100000 if os.environ.get("PARLEY_TEST_LOG") else 60)))
        self.net.remove()
        shutil.rmtree(self.tmp, ignore_errors=True)


def tls_args(directory):
    """parleyd's flags for the certificate, key and CA that `parley cert` wrote in DIRECTORY."""
    return ["--tls_cert=%s/cert.pem" % directory, "--tls_key=%s/key.pem" % directory,
            "--tls_ca=%s/ca.pem" % directory]


def _interrupted(signum, frame):
    raise Failure("interrupted by signal %d" % signum)


def run(description, make_test):
    """The main of a netns test: parses --bin/--source, skips (77) without root, runs
    make_test(opts).run() and always its cleanup(failed), even when a signal arrives."""
    import argparse
    p = argparse.ArgumentParser(description=description)
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
        test = make_test(opts)
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
