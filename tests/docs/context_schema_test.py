#!/usr/bin/env python3
"""The context file's schema (docs/context-file.schema.json) and its documentation (the table in
docs/service-definitions.md, "The context file") list the same fields, every field of the schema
has a description, and the schema is itself valid JSON Schema. What the backend writes is checked
against the same schema by ExecBackendTest.TheContextFileFollowsItsSchema, so the three cannot
drift apart. Needs python3-jsonschema (tools/setup installs it).

Usage: context_schema_test.py [ROOT]   (default: the source tree this file is in)
"""
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else __file__).resolve()
if ROOT.is_file():
    ROOT = ROOT.parents[2]
SCHEMA = ROOT / "docs" / "context-file.schema.json"
DOC = ROOT / "docs" / "service-definitions.md"


def schema_fields(node, prefix, out, problems):
    """Dotted paths of every property under `node` ("relations[].id"), into `out`."""
    for name, sub in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        if not sub.get("description"):
            problems.append(f"{SCHEMA}: field '{path}' has no description")
        out.append(path)
        schema_fields(sub, path + ".", out, problems)
        items = sub.get("items")
        if isinstance(items, dict):
            schema_fields(items, path + "[].", out, problems)


def doc_fields(text):
    """The first column of the table under '### The context file', with its line numbers."""
    lines = text.splitlines()
    try:
        start = lines.index("### The context file")
    except ValueError:
        sys.exit(f"{DOC}: no '### The context file' section")
    fields = []
    for n, line in enumerate(lines[start + 1:], start + 2):
        if line.startswith("#"):
            break
        m = re.match(r"^\| `([^`]+)` \|", line)
        if m:
            fields.append((m.group(1), n))
    return fields


def main():
    try:
        import jsonschema
    except ImportError:
        sys.exit("context_schema_test: python3 cannot import jsonschema: install the Debian "
                 "package python3-jsonschema (tools/setup does)")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    problems = []
    in_schema = []
    schema_fields(schema, "", in_schema, problems)
    in_doc = doc_fields(DOC.read_text())
    doc_names = [f for f, _ in in_doc]
    for f, n in in_doc:
        if f not in in_schema:
            problems.append(f"{DOC}:{n}: '{f}' is documented but is not in {SCHEMA.name}")
        if doc_names.count(f) > 1:
            problems.append(f"{DOC}:{n}: '{f}' is documented twice")
    for f in in_schema:
        if f not in doc_names:
            problems.append(f"{SCHEMA.name}: field '{f}' is not in the table of {DOC}")
    version = schema["properties"]["version"].get("const")
    if not re.search(rf"\| `version` \| int \| the schema's version, `{version}`", DOC.read_text()):
        problems.append(f"{DOC}: the table does not give the schema's version {version}")
    if problems:
        sys.exit("\n".join(problems))
    print(f"{len(in_schema)} fields, documented and in the schema")


if __name__ == "__main__":
    main()
