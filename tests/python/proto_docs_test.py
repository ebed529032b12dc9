"""Every message, field, enum value, service and RPC of proto/parley/v1 has a comment, and every
file is package parley.v1 under parley/v1/ (docs/api.md, "Compatibility"). Only *_UNSPECIFIED enum values may go without.
protoc parses the files with their comments, so this checks what any generator sees."""

import os
import subprocess
import sys
import tempfile
import unittest

from google.protobuf import descriptor_pb2

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")
PROTOC = os.environ.get("PROTOC", "protoc")

# FileDescriptorProto / DescriptorProto / ... field numbers used in SourceCodeInfo paths.
MESSAGE, ENUM, SERVICE = 4, 5, 6
NESTED_MESSAGE, NESTED_ENUM, FIELD = 3, 4, 2
ENUM_VALUE, METHOD = 2, 2

def load():
    files = sorted(os.path.join("parley", "v1", f)
                   for f in os.listdir(os.path.join(ROOT, "parley", "v1")) if f.endswith(".proto"))
    with tempfile.NamedTemporaryFile(suffix=".pb") as out:
        subprocess.run([PROTOC, "-I", ROOT, "--include_source_info",
                        "--descriptor_set_out=" + out.name] + files, check=True)
        fds = descriptor_pb2.FileDescriptorSet()
        fds.ParseFromString(out.read())
    return fds


def commented(f):
    """Paths (as tuples) of elements with a comment of their own, leading or trailing."""
    return {tuple(loc.path) for loc in f.source_code_info.location
            if loc.leading_comments.strip() or loc.trailing_comments.strip()}


def undocumented(f):
    have = commented(f)
    missing = []

    def message(m, path, name):
        for i, field in enumerate(m.field):
            if path + (FIELD, i) not in have:
                missing.append(f"{name}.{field.name}")
        for i, nested in enumerate(m.nested_type):
            if not nested.options.map_entry:
                message(nested, path + (NESTED_MESSAGE, i), f"{name}.{nested.name}")
        for i, e in enumerate(m.enum_type):
            enum(e, path + (NESTED_ENUM, i), f"{name}.{e.name}")

    def enum(e, path, name):
        for i, v in enumerate(e.value):
            if path + (ENUM_VALUE, i) not in have and not v.name.endswith("_UNSPECIFIED"):
                missing.append(f"{name}.{v.name}")

    for i, m in enumerate(f.message_type):
        message(m, (MESSAGE, i), m.name)
    for i, e in enumerate(f.enum_type):
        enum(e, (ENUM, i), e.name)
    for i, s in enumerate(f.service):
        for j, method in enumerate(s.method):
            if (SERVICE, i, METHOD, j) not in have:
                missing.append(f"{s.name}.{method.name}")
    return missing


class ProtoDocsTest(unittest.TestCase):
    maxDiff = None

    def test_layout_is_parley_v1(self):
        for f in load().file:
            self.assertTrue(f.name.startswith("parley/v1/"), f.name)
            self.assertEqual(f.package, "parley.v1", f.name)
            self.assertEqual(f.syntax, "proto3", f.name)

    def test_every_field_value_and_rpc_is_documented(self):
        missing = {f.name: undocumented(f) for f in load().file}
        missing = {k: v for k, v in missing.items() if v}
        self.assertEqual(missing, {}, "undocumented (add a comment of its own):")


if __name__ == "__main__":
    unittest.main(verbosity=2)
