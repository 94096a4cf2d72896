"""``ESSENCE_SLICE_CACHE_MB`` that is not a finite size ≥ 0 is one line and exit 2, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from essence.core.base.errors import StoreError
from essence.storage.activations import LIMIT_ENV, slice_limit_bytes
from tests.reliability.reliability_helpers import FACTORY_MODULE, make_workspace, run_cli

BAD = ["inf", "-inf", "nan", "-5", "lots", "1e400"]


@pytest.mark.parametrize("value", BAD)
def test_the_api_names_the_variable(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LIMIT_ENV, value)
    with pytest.raises(StoreError, match=LIMIT_ENV):
        slice_limit_bytes()


def test_a_finite_size_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LIMIT_ENV, "1.5")
    assert slice_limit_bytes() == int(1.5 * (1 << 20))


@pytest.mark.slow
def test_the_cli_says_one_line_and_exits_2(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    for value in ("inf", "nan", "-5"):
        result = run_cli(
            ws,
            "profile",
            "--model",
            f"{FACTORY_MODULE}:cnn",
            "--data",
            f"npz:{ws.npz}",
            "--layer",
            "conv",
            **{LIMIT_ENV: value},
        )
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (value, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and LIMIT_ENV in lines[0], result.stderr
