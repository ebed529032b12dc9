#!/usr/bin/env python3
"""The include rules of docs/architecture.md, checked on the source tree.

For each folder listed in LAYERS: its files include only headers of the folders it may call
(and system or library headers), headers it keeps internal are included only from inside it (and
its tests), and headers inside it include each other without a circle. Folders not listed are
not checked yet.

Usage: layers_test.py SOURCE_DIR
"""

import os
import re
import sys

# folder -> the folders of ours it may include, besides itself. "parley/v1" is the generated
# protobuf code (proto/).
LAYERS = {
    "base": set(),
    "kb": {"base"},
    "engine": {"base", "kb", "parley/v1"},
    "services/telemetry": {"base", "parley/v1"},
    # The coordination seam and its etcd implementation: nothing of ours but base (the etcd
    # contracts are generated, not ours).
    "services/coord": {"base"},
    "services/fixtures": {"base", "kb", "engine", "parley/v1"},
    # service.yaml's `leadership:` lease settings are checked by the coordination seam's rule.
    "services/definition": {"base", "kb", "engine", "parley/v1", "services/coord"},
    # The health monitor (schedule, thresholds, the workload's health) sits on the engine's
    # HealthProbe seam; the probe kinds are in services/backends/probes.
    "services/health": {"base", "engine", "parley/v1"},
    # The backends as a whole, then each kind: a kind sees the shared pieces, never another kind.
    "services/backends": {"base", "kb", "engine", "parley/v1", "services/definition"},
    "services/backends/common": {"base"},
    "services/backends/builtin": {"base", "kb", "engine", "parley/v1", "services/definition"},
    "services/backends/process": {"base", "kb", "engine", "parley/v1", "services/definition",
                                  "services/backends/common"},
    "services/backends/exec": {"base", "kb", "engine", "parley/v1", "services/definition",
                               "services/backends/common", "services/backends/process"},
    "services/backends/ansible": {"base", "kb", "engine", "parley/v1", "services/definition",
                                  "services/backends/common", "services/backends/process"},
    # Health probes (exec, tcp, http) run programs and HTTP calls as the kinds do.
    "services/backends/probes": {"base", "kb", "engine", "parley/v1", "services/definition",
                                 "services/backends/common", "services/backends/process"},
    "services/backends/http": {"base", "kb", "engine", "parley/v1", "services/definition",
                               "services/backends/common"},
    "services/backends/container": {"base", "kb", "engine", "parley/v1", "services/definition",
                                    "services/backends/common"},
    # The CLI is a client of the agent API: never the KB or the agent runtime. Inside it,
    # commands/ (and main) sit on model/, which sits on deploy/, which sits on common/.
    "tools/cli": {"base", "engine", "parley/v1", "services/definition", "services/transport"},
    "tools/cli/common": {"parley/v1"},
    "tools/cli/deploy": {"base", "parley/v1", "services/definition", "services/transport",
                         "tools/cli/common"},
    "tools/cli/model": {"base", "parley/v1", "services/definition", "tools/cli/common",
                        "tools/cli/deploy"},
    # The runtime: the agent sees its environment (services/agent/agent_env.h), never the host;
    # transport sees the host through interfaces of its own (services/transport/transport_host.h).
    "services/agent": {"base", "kb", "engine", "parley/v1", "services/telemetry",
                       "services/health", "services/coord"},
    "services/transport": {"base", "kb", "engine", "parley/v1", "services/telemetry",
                           "services/agent", "services/health", "services/coord"},
    "services/host": {"base", "kb", "engine", "parley/v1", "services/telemetry", "services/agent",
                      "services/transport", "services/health", "services/coord"},
    # The composition root: parleyd's main wires the host, the backends and (in test mode) the
    # fixtures; nothing includes it.
    "services/daemon": {"base", "kb", "engine", "parley/v1", "services/telemetry",
                        "services/agent", "services/transport", "services/host",
                        "services/definition", "services/backends", "services/fixtures",
                        "services/coord"},
    # parley-hook is a standalone client of the hook socket: it includes nothing of ours.
    "tools/hook": set(),
    "tools/demo": {"base", "kb", "engine", "parley/v1"},
    # Benchmarks measure every layer, and run the fault campaign of tests/services/daemon/.
    "tools/bench": {"base", "kb", "engine", "parley/v1", "services/telemetry", "services/agent",
                    "services/transport", "services/host", "services/definition",
                    "services/backends", "services/fixtures", "tests/services/daemon"},
}
# Headers only their own folder (and its tests, tests/<folder>/) may include.
INTERNAL = {
    "kb": {"store_impl.h"},
    "engine": {"handler_graph.h", "inbox.h", "key_layout.h", "outbox.h", "relations.h",
               "run.h", "trace.h"},
    "services/definition": {"action_reader.h", "health_reader.h", "names.h", "yaml_fields.h"},
    "services/backends/process": {"child.h", "context_file.h", "fd.h", "hook_handler.h",
                                  "hook_server.h"},
}
# Libraries a folder's public headers must not expose.
HIDDEN_IN_PUBLIC_HEADERS = {"kb": ("rocksdb/",)}
OURS = ("base/", "kb/", "engine/", "services/", "tools/", "parley/v1/", "tests/")
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def includes(path):
    with open(path, encoding="utf-8") as f:
        return INCLUDE.findall(f.read())


def sources(root, folder):
    for dirpath, _, names in os.walk(os.path.join(root, folder)):
        for name in sorted(names):
            if name.endswith((".h", ".cc")):
                yield os.path.join(dirpath, name)


def folder_circles():
    """The table itself points down: no folder may (through others) include itself."""
    problems = []
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(LAYERS.get(node, ())):
            if state.get(nxt) == "open":
                problems.append("folder circle in LAYERS: " + " -> ".join(stack + [node, nxt]))
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for node in sorted(LAYERS):
        if node not in state:
            visit(node, [])
    return problems


def main():
    root = sys.argv[1]
    problems = folder_circles()
    for folder, allowed in LAYERS.items():
        graph = {}
        for path in sources(root, folder):
            rel = os.path.relpath(path, root)
            public_header = rel.endswith(".h") and os.path.basename(rel) not in INTERNAL.get(folder, ())
            for inc in includes(path):
                if inc.startswith(folder + "/"):
                    if rel.endswith(".h"):
                        graph.setdefault(rel, []).append(inc)
                    continue
                if inc.startswith(OURS) and not any(inc.startswith(a + "/") for a in allowed):
                    problems.append(f"{rel}: includes {inc}, but {folder}/ may include only "
                                    f"{', '.join(sorted(allowed)) or 'nothing of ours'}")
                if public_header and inc.startswith(HIDDEN_IN_PUBLIC_HEADERS.get(folder, ())):
                    problems.append(f"{rel}: a public header of {folder}/ includes {inc}")
        # No circle among the folder's headers.
        state = {}

        def visit(node, stack):
            state[node] = "open"
            for nxt in graph.get(node, []):
                if state.get(nxt) == "open":
                    problems.append("include circle: " + " -> ".join(stack + [node, nxt]))
                elif nxt not in state:
                    visit(nxt, stack + [node])
            state[node] = "done"

        for node in sorted(graph):
            if node not in state:
                visit(node, [])
    # Internal headers stay inside their folder (and its tests).
    for dirpath, dirs, names in os.walk(root):
        if os.path.samefile(dirpath, root):
            # Build trees and hidden folders are not the project's source.
            dirs[:] = [d for d in dirs if not d.startswith(("build", "."))]
        for name in names:
            if not name.endswith((".h", ".cc")):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            for inc in includes(path):
                folder, header = os.path.dirname(inc), os.path.basename(inc)
                if header in INTERNAL.get(folder, ()) and not (
                        rel.startswith(folder + "/") or rel.startswith(f"tests/{folder}/")):
                    problems.append(f"{rel}: includes {inc}, internal to {folder}/")
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print(f"layers hold for {', '.join(LAYERS)}")


if __name__ == "__main__":
    main()
