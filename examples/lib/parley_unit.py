"""Helpers for exec handlers written in Python (standard library only).

An exec handler runs with PARLEY_UNIT ("app/2"), PARLEY_CONTEXT (a JSON file: config, facts, the
data of every relation) and parley-hook on its PATH (docs/service-definitions.md). Definitions
import this file through a symlink in their bin/ directory.
"""

import json
import os
import signal
import socket
import subprocess
import time


class HookError(Exception):
    pass


def hook(*args, check=True):
    """Runs `parley-hook ARGS...` and returns its output (stripped); refusals raise HookError."""
    p = subprocess.run(["parley-hook", *map(str, args)], capture_output=True, text=True)
    if p.returncode != 0:
        if check:
            raise HookError("parley-hook %s: %s" % (" ".join(map(str, args)), p.stderr.strip()))
        return None
    return p.stdout.strip()


def status(state, message):
    hook("status", "set", state, message)


def log(message):
    hook("log", message)


def context():
    with open(os.environ["PARLEY_CONTEXT"]) as f:
        return json.load(f)


def unit():
    return os.environ["PARLEY_UNIT"]


def unit_number():
    return int(unit().rsplit("/", 1)[1])


def state_dir():
    """The unit's persistent state directory (PARLEY_STATE_DIR), created if needed."""
    path = os.environ.get("PARLEY_STATE_DIR")
    if not path:
        # Agents that do not provide PARLEY_STATE_DIR yet: a per-unit directory under $TMPDIR.
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "parley-state", unit().replace("/", "-"))
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def remote_units(ctx, endpoint):
    """{remote unit: its data} over every relation of ENDPOINT (service data overlaid with unit data)."""
    units = {}
    for rel in ctx.get("relations", []):
        if rel.get("endpoint") != endpoint:
            continue
        for name in rel.get("remote_units", []):
            data = dict(rel.get("remote_service_data", {}))
            data.update(rel.get("remote_unit_data", {}).get(name, {}))
            units[name] = data
    return units


def _write(path, text, mode):
    tmp = path + ".new"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def stage(path, text, mode=0o600):
    """Writes TEXT to PATH (atomically) for a daemon to start with; returns whether the daemon
    must be (re)started to use it: TEXT differs from what the running daemon was started with, as
    applied() recorded it, not from what PATH held. A handler killed between writing PATH and
    restarting (its parleyd SIGKILLed) is retried: the retry then still restarts."""
    if _read(path) != text:
        _write(path, text, mode)
    return _read(path + ".applied") != text


def applied(*paths, mode=0o600):
    """Records that the daemon now runs with what stage() wrote to PATHS (call it once it is up)."""
    for path in paths:
        _write(path + ".applied", _read(path), mode)


def write_if_changed(path, text, mode=0o600):
    """Writes TEXT to PATH atomically; returns whether the content changed. For a file read
    anew at each use (examples/postgres); a daemon's config read once at its start wants stage()
    and applied(), which a kill between writing and restarting cannot fool."""
    if _read(path) == text:
        return False
    _write(path, text, mode)
    return True


def pid_alive(pidfile, marker):
    """The pid in PIDFILE if that process runs and its command line contains MARKER, else None."""
    try:
        with open(pidfile) as f:
            pid = int(f.read().split()[0])
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            if marker.encode() not in f.read():
                return None
        return pid
    except (OSError, ValueError, IndexError):
        return None


def start_daemon(argv, pidfile, logfile, cwd=None, env=None):
    """Starts ARGV in a session of its own (so it outlives the handler) and records its pid."""
    with open(logfile, "ab") as out:
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    with open(pidfile, "w") as f:
        f.write("%d\n" % p.pid)
    return p


def stop_daemon(pidfile, marker, timeout=10.0):
    """SIGTERM, then SIGKILL after TIMEOUT seconds; True when something was stopped."""
    pid = pid_alive(pidfile, marker)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
        _reap(pid)
    try:
        os.unlink(pidfile)
    except FileNotFoundError:
        pass
    return True


def _gone(pid):
    """Exited (a zombie counts: it holds no ports or files any more)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def _reap(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_port(host, port, timeout=10.0, alive=None):
    """Waits until HOST:PORT accepts connections; False on timeout or when ALIVE() says it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return True
        except OSError:
            if alive is not None and not alive():
                return False
            time.sleep(0.1)
    return False


def tail(path, lines=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""
