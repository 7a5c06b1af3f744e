"""Sections of BENCHMARKS.md owned by other scripts than bench.py.

bench.py rewrites BENCHMARKS.md as a whole; a script that measures something
else (scripts/snapshot_bench.py) owns one section between two markers, and
bench.py carries every such section over when it rewrites the file."""

from __future__ import annotations

import re
from pathlib import Path

_SECTION = re.compile(r"<!-- BEGIN (?P<name>[\w.-]+) -->\n.*?<!-- END (?P=name) -->\n", re.S)


def owned_sections(path: Path) -> str:
    """Every owned section of the file at path, concatenated ("" if none or no file)."""
    if not path.exists():
        return ""
    return "".join(m.group(0) for m in _SECTION.finditer(path.read_text()))


def replace_section(path: Path, name: str, body: str) -> None:
    """Put body in section `name` of the file at path (appended if absent)."""
    block = f"<!-- BEGIN {name} -->\n{body.rstrip()}\n<!-- END {name} -->\n"
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->\n.*?<!-- END {re.escape(name)} -->\n", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block if text else block
    path.write_text(text)
