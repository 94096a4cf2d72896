"""The README and the docs, read as a new user reads them: every command they show names a real command and real
flags, every link points at a file, and the cheap demo commands of the README run as written and give what it says.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from essence.cli import app

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = [
    README,
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "SECURITY.md",
    ROOT / "benchmarks" / "README.md",
]
# `essence CMD` or `essence GROUP SUB` followed by its arguments, up to the end of the code span or line.
COMMAND = re.compile(r"\bessence ((?:store|demo) [a-z]+|[a-z]+)\b([^`\n]*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _commands() -> dict[str, set[str]]:
    """Every command of the console script and the long options it accepts."""
    root = typer.main.get_command(app)
    found: dict[str, set[str]] = {}

    def walk(group: object, prefix: str) -> None:
        for name, cmd in group.commands.items():  # type: ignore[attr-defined]
            full = f"{prefix}{name}"
            if hasattr(cmd, "commands"):
                walk(cmd, f"{full} ")
            else:
                found[full] = {
                    o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")
                }

    walk(root, "")
    return found


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Lines with shell continuations (a trailing backslash) joined, each with its first line number."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def _bash_blocks(text: str) -> list[list[str]]:
    """The commands of each ```bash block (continuations joined, comments and blank lines dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        lines = [line.split("  #")[0].strip() for _, line in _logical_lines(block)]
        commands.append([line for line in lines if line and not line.startswith("#")])
    return commands


def test_every_documented_command_and_flag_exists() -> None:
    commands = _commands()
    wrong = []
    for doc in DOCS:
        for number, line in _logical_lines(doc.read_text(encoding="utf-8")):
            for match in COMMAND.finditer(line):
                name, rest = match.group(1), match.group(2)
                if name not in commands:
                    if name.split()[0] in ("store", "demo") or name in ("core", "cli", "storage", "app"):
                        continue  # `essence.core`, a sentence naming the store: not a command line
                    wrong.append(f"{doc.name}:{number}: no command `essence {name}`")
                    continue
                if name == "app":  # Streamlit's own options pass through
                    continue
                # flags of a second command on the same line belong to it, not to this one
                rest = re.split(r"\bessence |\btorchrun ", rest)[0]
                for flag in FLAG.findall(rest):
                    if flag not in commands[name] and flag != "--help":
                        wrong.append(f"{doc.name}:{number}: `essence {name}` has no {flag}")
    assert not wrong, "\n".join(wrong)


def test_the_flags_the_readme_promises_for_every_analysis() -> None:
    commands = _commands()
    analyses = [
        *("profile", "precompute", "triage", "experts", "diagnose"),
        *("compare", "explain", "layers", "report"),
    ]
    assert not [c for c in analyses if "--device" not in commands[c]]
    assert not [c for c in analyses if c != "report" and "--json" not in commands[c]]
    for name in ("profile", "precompute", "triage", "experts", "diagnose"):
        assert {"--size", "--blur-sigma", "--preprocessing"} <= commands[name], name
    assert {"--size", "--preprocessing"} <= commands["explain"]


def test_every_doc_link_points_at_a_file() -> None:
    missing = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            path = target.split("#")[0]
            if not path or re.match(r"[a-z]+:", path):
                continue  # an anchor on the same page, or a URL
            if not (doc.parent / path).exists():
                missing.append(f"{doc.relative_to(ROOT)} → {target}")
    assert not missing, "\n".join(missing)


def test_the_readme_python_snippet_names_only_what_essence_core_exports() -> None:
    import essence.core

    snippet = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)[0]
    names = re.search(r"from essence\.core import ([^\n]+)", snippet)
    assert names is not None
    missing = [n.strip() for n in names.group(1).split(",") if not hasattr(essence.core, n.strip())]
    assert not missing


def _run_as_written(line: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One README command as a user types it, with `.venv/bin/` meaning the environment running the tests."""
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "essence").exists(), "the console script is installed beside the interpreter"
    words = shlex.split(line)
    if words[0].startswith(".venv/bin/"):
        words[0] = str(bin_dir / words[0].removeprefix(".venv/bin/"))
    return subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # about 20 s of CPU: three processes, a fresh store, the 798 test images
def test_the_readme_demo_commands_run_as_written(tmp_path: Path) -> None:
    """The explain example (its image written by the README's own line) and the triage of the paper's story."""
    blocks = _bash_blocks(README.read_text(encoding="utf-8"))
    story = next(b for b in blocks if any("essence diagnose" in c for c in b))
    triage = next(c for c in story if "essence triage" in c)
    explain = next(b for b in blocks if any("essence explain" in c for c in b))
    env = {**os.environ, "ESSENCE_HOME": str(tmp_path / "home"), "COLUMNS": "200"}

    for line in [*explain, triage]:
        done = _run_as_written(line, tmp_path, env)
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        assert "Traceback" not in done.stderr, done.stderr

    assert (tmp_path / "sev2.png").stat().st_size > 0
    assert (tmp_path / "panel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # DESIGN §4: the triage JSON's stable keys, every instance ranked, and the recipe as applied.
    out = json.loads((tmp_path / "triage.json").read_text())
    assert {"layer", "scores", "preprocessing"} <= set(out)
    assert out["preprocessing"]["blur_sigma"] == 2.0  # the blur of demo:blurred, the bug of the story
    rows = out["scores"]
    assert len(rows) == 798  # every ranked instance, not only the 20 printed
    assert sorted(r["index"] for r in rows) == list(range(798))
    for key in ("index", "label", "predicted", "confidence", "deviation", "reasoning"):
        assert all(key in r for r in rows), key
    deviations = [r["deviation"] for r in rows]
    assert deviations == sorted(deviations, reverse=True)  # most suspect first
    # The story: the blurred model never predicts severity 2 (class index 1).
    assert not any(r["predicted"] == 1 for r in rows)
    assert sum(r["label"] == 1 for r in rows) == 57


def test_a_unit_at_zero_is_no_top_unit_of_either_sign(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/app.md: "a unit at 0 is neither" — the CLI's summary lists only units that push that way."""
    import torch

    from essence.cli.profile import print_summary
    from essence.core.analyses.profiles import ClassProfiles

    mean = torch.tensor([[0.5, 0.0, 0.0, 0.2], [0.0, -0.3, 0.0, 0.0]])
    profiles = ClassProfiles(
        mean,
        torch.zeros_like(mean),
        torch.tensor([3, 4]),
        ["a", "b"],
        "fc",
        "channel",
        "logit[label]",
        (4,),
        None,
    )  # type: ignore[arg-type]
    print_summary(profiles, 0.1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].strip() == "a (n=3)  top + [0:+0.5, 3:+0.2]  top − [none]"
    assert lines[2].strip() == "b (n=4)  top + [none]  top − [1:-0.3]"
