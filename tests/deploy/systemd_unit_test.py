#!/usr/bin/env python3
"""systemd_unit_test: deploy/systemd/parleyd@.service is a unit systemd accepts and its command
line is one parleyd runs.

- `systemd-analyze verify` passes on it with nothing to say (systemd-analyze must be on PATH: the
  Debian package systemd, which tools/setup installs; without it the test fails naming it);
- it restarts parleyd on failure, after RestartSec, and reads /etc/parley/%i.env;
- every flag its ExecStart passes is one `parleyd --help` lists, none twice;
- every variable ExecStart uses has a default (Environment=), every default is used, and the keys
  of deploy/systemd/parleyd.env.example and of docs/deploy.md's table are exactly those;
- the command line, expanded as systemd expands it with an environment file, starts the parleyd
  under test (it listens and writes its address file) and SIGTERM stops it with status 0, which
  Restart=on-failure does not restart; with the unit's default TLS files absent, parleyd fails at
  startup naming the certificate;
- a model that `parley up` runs, handed over to that command line as docs/deploy.md says
  (deploy/systemd/env-from-model.py), is recognised by the CLI, keeps its config, and `parley
  down` stops it with status 0.

  systemd_unit_test.py --parleyd PATH --parley PATH --source DIR
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

INSTANCE = "systemd-unit-test"


def fail(message):
    print("FAIL: " + message, file=sys.stderr)
    sys.exit(1)


def read_unit(path):
    """[(section, key, value)] of a unit file, continuation lines joined, comments left out."""
    entries, section, pending = [], None, ""
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not pending and (not line.strip() or line.lstrip()[0] in "#;"):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line, pending = pending + line, ""
            if line.startswith("["):
                section = line.strip("[] ")
                continue
            if "=" not in line:
                fail("%s:%d: not KEY=VALUE: %s" % (path, number, line))
            key, value = line.split("=", 1)
            entries.append((section, key.strip(), value.strip()))
    return entries


def read_env_file(path):
    """KEY=value lines of an EnvironmentFile, in order."""
    env = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if "=" not in line:
                fail("%s:%d: not KEY=value: %s" % (path, number, line))
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


def expand(words, env):
    """ExecStart's words as systemd expands them: ${VAR} within a word, a word that is $VAR alone
    split at whitespace (and dropped when empty)."""
    argv = []
    for w in words:
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", w)
        if whole:
            argv.extend(env.get(whole.group(1), "").split())
        else:
            argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), w))
    return argv


def setup_packages(source):
    text = open(os.path.join(source, "tools", "setup")).read()
    block = re.search(r"^packages=\((.*?)^\)", text, re.S | re.M)
    if not block:
        fail("tools/setup has no packages=( ... ) list")
    return {w for line in block.group(1).splitlines() for w in line.split("#", 1)[0].split()}


def wait_for(what, condition, timeout_s):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            fail("%s: not within %d s" % (what, timeout_s))
        time.sleep(0.05)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--parleyd", required=True)
    parser.add_argument("--parley", required=True)
    parser.add_argument("--source", required=True)
    args = parser.parse_args()
    args.parleyd, args.parley = os.path.abspath(args.parleyd), os.path.abspath(args.parley)
    unit_path = os.path.join(args.source, "deploy", "systemd", "parleyd@.service")
    example_path = os.path.join(args.source, "deploy", "systemd", "parleyd.env.example")
    docs_path = os.path.join(args.source, "docs", "deploy.md")

    if "systemd" not in setup_packages(args.source):
        fail("tools/setup does not install systemd, which provides systemd-analyze")
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        fail("no systemd-analyze on PATH: install the Debian package systemd (tools/setup installs it)")

    entries = read_unit(unit_path)
    service = {}
    for section, key, value in entries:
        if section == "Service":
            service.setdefault(key, []).append(value)
    for key, want in [("Restart", "on-failure"), ("EnvironmentFile", "/etc/parley/%i.env")]:
        if service.get(key) != [want]:
            fail("%s: [Service] %s is %s, not %s" % (unit_path, key, service.get(key), want))
    if "RestartSec" not in service:
        fail("%s: no RestartSec" % unit_path)
    if len(service.get("ExecStart", [])) != 1:
        fail("%s: want one ExecStart, have %s" % (unit_path, service.get("ExecStart")))
    words = service["ExecStart"][0].split()
    binary = words[0]
    if not binary.startswith("/") or os.path.basename(binary) != "parleyd":
        fail("%s: ExecStart runs %s, not an absolute path to parleyd" % (unit_path, binary))

    with tempfile.TemporaryDirectory(prefix="parley-systemd-unit-") as tmp:
        # verify checks that the command exists: the copy runs the parleyd under test instead.
        with open(unit_path) as f:
            text = f.read()
        with open(os.path.join(tmp, "parleyd@.service"), "w") as f:
            f.write(text.replace("ExecStart=" + binary, "ExecStart=" + os.path.abspath(args.parleyd)))
        verify = subprocess.run([analyze, "verify", "parleyd@%s.service" % INSTANCE], cwd=tmp,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=60)
        said = [l for l in verify.stdout.splitlines() if "parleyd@" in l]
        if verify.returncode != 0 or said:
            fail("systemd-analyze verify (exit %d):\n%s" % (verify.returncode, verify.stdout))
        print("systemd-analyze verify: ok")

        # The flags.
        help_text = subprocess.run([args.parleyd, "--help"], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, timeout=30).stdout
        known = set(re.findall(r"^\s+--([A-Za-z0-9_]+) \(", help_text, re.M))
        if "data" not in known:
            fail("parleyd --help lists no --data; its output:\n" + help_text)
        passed = []
        for w in words[1:]:
            m = re.fullmatch(r"--([A-Za-z0-9_]+)(=.*)?", w)
            if not m:
                fail("%s: ExecStart word %r is not a --flag=value" % (unit_path, w))
            passed.append(m.group(1))
        unknown = [f for f in passed if f not in known]
        if unknown:
            fail("ExecStart passes flags parleyd --help does not list: %s" % ", ".join(unknown))
        twice = sorted({f for f in passed if passed.count(f) > 1})
        if twice:
            fail("ExecStart passes %s more than once" % ", ".join(twice))
        print("flags, all in parleyd --help: %s" % " ".join(passed))

        # The keys.
        used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", service["ExecStart"][0]))
        defaults = {}
        for assignment in service.get("Environment", []):
            key, value = assignment.split("=", 1)
            defaults[key] = value
        if used - set(defaults):
            fail("ExecStart uses %s with no Environment= default" % sorted(used - set(defaults)))
        if set(defaults) - used:
            fail("Environment= sets %s, which ExecStart does not use" % sorted(set(defaults) - used))
        example = read_env_file(example_path)
        if set(example) != used:
            fail("%s has keys %s; the unit's are %s" % (example_path, sorted(example), sorted(used)))
        docs = open(docs_path).read()
        undocumented = sorted(k for k in used if "`%s`" % k not in docs)
        if undocumented:
            fail("docs/deploy.md does not document %s" % ", ".join(undocumented))

        # The command line, run.
        env = {k: v.replace("%i", INSTANCE) for k, v in defaults.items()}
        env_file = os.path.join(tmp, INSTANCE + ".env")
        with open(env_file, "w") as f:
            f.write("PARLEY_DATA=%s/kb\nPARLEY_STATE_DIR=%s/units\nPARLEY_LISTEN=127.0.0.1:0\n"
                    "PARLEY_ADDRESS_FILE=%s/address\nPARLEY_PLAINTEXT=true\n" % (tmp, tmp, tmp))
        env.update(read_env_file(env_file))
        argv = [os.path.abspath(args.parleyd)] + expand(words[1:], env)
        log = open(os.path.join(tmp, "parleyd.log"), "w+")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        address_file = env["PARLEY_ADDRESS_FILE"]

        def listening():
            if proc.poll() is not None:
                log.seek(0)
                fail("parleyd %s exited %d at startup:\n%s" % (" ".join(argv), proc.returncode, log.read()))
            return os.path.exists(address_file) and open(address_file).read().strip() != ""

        try:
            wait_for("parleyd writes " + address_file, listening, 30)
            print("parleyd listens at %s" % open(address_file).read().strip())
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if code != 0:
            log.seek(0)
            fail("parleyd exited %d on SIGTERM (Restart=on-failure would start it again):\n%s"
                 % (code, log.read()))
        print("SIGTERM: exit 0")

        # The defaults alone: TLS from /etc/parley/<instance>/tls, absent here.
        env = {k: v.replace("%i", INSTANCE) for k, v in defaults.items()}
        env.update(PARLEY_DATA=tmp + "/kb2", PARLEY_STATE_DIR=tmp + "/units2",
                   PARLEY_LISTEN="127.0.0.1:0")
        if os.path.exists(env["PARLEY_TLS_CERT"]):
            fail("%s exists on this machine; the test needs it absent" % env["PARLEY_TLS_CERT"])
        no_tls = subprocess.run([os.path.abspath(args.parleyd)] + expand(words[1:], env),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=30)
        if no_tls.returncode == 0 or env["PARLEY_TLS_CERT"] not in no_tls.stdout:
            fail("parleyd without its TLS files: exit %d, %r (want a failure naming %s)"
                 % (no_tls.returncode, no_tls.stdout, env["PARLEY_TLS_CERT"]))
        print("without its TLS files: %s" % no_tls.stdout.strip())

        hand_over(args, words, defaults, tmp)
    print("PASS")


def hand_over(args, words, defaults, tmp):
    """A model `parley up` runs, handed to the unit's command line as docs/deploy.md says
    (env-from-model.py, `parley down`, then what systemd runs): the CLI recognises that parleyd,
    the unit comes back with the config `parley config` gave it, and `parley down` stops it with
    status 0."""
    model = os.path.join(tmp, "model")
    os.makedirs(os.path.join(model, "web"))
    with open(os.path.join(model, "web", "service.yaml"), "w") as f:
        f.write("""name: web
config:
  port: {type: int, default: 8000}
handlers:
  - name: serve
    on: [start, config.changed]
    action:
      kind: builtin
      steps:
        - status: {state: active, message: "on {{config.port}}"}
""")
    with open(os.path.join(model, "model.yaml"), "w") as f:
        f.write("interfaces: %s\nservices:\n  web: {definition: web, units: 1}\n"
                % os.path.join(args.source, "examples", "interfaces"))
    model_dir = os.path.join(model, ".parley")
    cli_env = dict(os.environ, PARLEY_MODEL_DIR=model_dir)

    def parley(*argv, check=True):
        r = subprocess.run([args.parley] + list(argv), cwd=model, env=cli_env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        if check and r.returncode != 0:
            fail("parley %s (exit %d):\n%s" % (" ".join(argv), r.returncode, r.stdout))
        return r.stdout

    proc = None
    try:
        parley("up", "model.yaml", "--timeout", "60s")
        parley("config", "web", "port=9100")
        parley("wait", "--timeout", "60s")
        env_file = os.path.join(tmp, "model.env")
        made = subprocess.run([sys.executable, os.path.join(args.source, "deploy", "systemd",
                                                            "env-from-model.py"), model_dir],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=30)
        if made.returncode != 0:
            fail("env-from-model.py %s: %s" % (model_dir, made.stdout))
        with open(env_file, "w") as f:
            f.write(made.stdout)
        parley("down")
        env = {k: v.replace("%i", INSTANCE) for k, v in defaults.items()}
        env.update(read_env_file(env_file))
        address_file = env["PARLEY_ADDRESS_FILE"]
        if os.path.exists(address_file):
            os.remove(address_file)
        argv = [os.path.abspath(args.parleyd)] + expand(words[1:], env)
        log = open(os.path.join(tmp, "handed-over.log"), "w+")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)

        def listening():
            if proc.poll() is not None:
                log.seek(0)
                fail("parleyd %s exited %d at startup:\n%s" % (" ".join(argv), proc.returncode,
                                                               log.read()))
            return os.path.exists(address_file) and open(address_file).read().strip() != ""

        wait_for("the handed-over parleyd writes " + address_file, listening, 30)
        parley("wait", "--timeout", "60s")
        status = parley("status")
        host_line = next((l for l in status.splitlines() if l.startswith("parleyd ")), "")
        if ("%s pid %d" % (env["PARLEY_LISTEN"], proc.pid)) not in host_line or "NOT RUNNING" in status:
            fail("parley status does not recognise the parleyd (pid %d) the unit's command line "
                 "runs:\n%s" % (proc.pid, status))
        if not re.search(r"^web/0 +active .*on 9100$", status, re.M):
            fail("web/0 did not come back active with the port parley config gave it:\n" + status)
        print("handed over: parley status recognises it (%s) and web/0 kept port 9100" % host_line)
        parley("down")
        code = proc.wait(timeout=30)
        if code != 0:
            fail("parleyd exited %d after parley down (Restart=on-failure would restart it)" % code)
        print("parley down: parleyd exited 0")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        # Whatever a failed step left running: the CLI's own parleyd.
        parley("down", check=False)


if __name__ == "__main__":
    main()
