#!/usr/bin/env python3
"""Every relative link in the repository's Markdown resolves: the file or directory exists, and a
#fragment names a heading of the target page (GitHub's anchors). Fast; no network.

Usage: links_test.py [ROOT]   (default: the source tree this file is in); ctest -R docs_links_test
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else __file__).resolve()
if ROOT.is_file():
    ROOT = ROOT.parents[2]

# Every Markdown file of the tree, outside build directories.
SKIP_DIRS = {".git", "node_modules"}
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def markdown_files():
    for path in sorted(ROOT.rglob("*.md")):
        rel = path.relative_to(ROOT)
        if any(p in SKIP_DIRS or p.startswith("build") for p in rel.parts[:-1]):
            continue
        yield path


def prose_lines(text):
    """(line number, line) outside fenced code blocks, with inline code removed."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield n, re.sub(r"`[^`]*`", "", line)


def slug(heading):
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to '-'."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    """The anchors of a page's headings (a repeated heading gets -1, -2, ...)."""
    seen, found = {}, set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def main():
    problems = []
    checked = 0
    for md in markdown_files():
        text = md.read_text(encoding="utf-8")
        for n, line in prose_lines(text):
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                checked += 1
                file_part, _, fragment = target.partition("#")
                dest = (md.parent / file_part).resolve() if file_part else md
                where = f"{md.relative_to(ROOT)}:{n}: ({target})"
                if not dest.exists():
                    problems.append(f"{where}: {file_part} does not exist")
                    continue
                if fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                    problems.append(f"{where}: no heading '#{fragment}' in {dest.relative_to(ROOT)}")
    for p in problems:
        print(p)
    print(f"{checked} relative links checked, {len(problems)} broken")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
