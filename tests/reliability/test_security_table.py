"""SECURITY.md's table of deserialisation points names, for each, a test file that exists and attacks it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_row_names_existing_tests() -> None:
    text = (ROOT / "SECURITY.md").read_text()
    section = text.split("## Every place Essence deserialises a file it did not write", 1)[1].split(
        "\n## ", 1
    )[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| what")]
    assert len(rows) >= 12, rows
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 4 and all(cells), row
        files = re.findall(r"`([a-z0-9_/]+\.py)`", cells[3])
        assert files, f"no test named for {cells[0]}"
        for f in files:
            assert (ROOT / "tests" / f).is_file(), f"{cells[0]}: tests/{f} does not exist"
