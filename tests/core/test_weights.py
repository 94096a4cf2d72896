"""Weights read safely: malicious pickles run nothing, missing or garbage files are named, not mistaken."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from essence.core.base.errors import ModelLoadError
from essence.core.inputs.models import load_model
from essence.core.inputs.weights import apply_state_dict, load_weights


class Sentinel:
    """Unpickling this creates a file: what a malicious pickle would do (here, harmlessly)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_malicious_pickle_runs_nothing(tmp_path):
    sentinel = tmp_path / "pwned"
    for name in ("evil.pt", "evil.pth"):
        path = tmp_path / name
        torch.save({"weight": torch.zeros(1), "payload": Sentinel(sentinel)}, path)
        with pytest.raises(ModelLoadError, match="refused"):
            load_weights(path)
        with pytest.raises(ModelLoadError):
            load_model(str(path))
        assert not sentinel.exists()
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(Sentinel(sentinel)))
    with pytest.raises(ModelLoadError):
        load_weights(plain)
    assert not sentinel.exists()


def test_missing_and_garbage_weights(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_weights(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_weights(junk)


def test_bytes_that_are_no_torch_file_are_not_called_a_pickle(tmp_path) -> None:
    """Random bytes named .pt get 'not a PyTorch file', not the pickle refusal (which would mislead)."""
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(7, 107)))
    with pytest.raises(ModelLoadError, match="not a PyTorch file") as info:
        load_weights(junk)
    assert "pickle, which can run" not in str(info.value)


def test_wrappers_and_data_parallel_prefix_are_unwrapped(tmp_path) -> None:
    torch.manual_seed(5)
    model = nn.Linear(3, 2)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "ckpt.pt")
    state = load_weights(tmp_path / "ckpt.pt")
    assert set(state) == {"weight", "bias"}
    assert torch.equal(state["weight"], model.weight.detach())


def test_apply_state_dict_names_missing_and_unexpected_keys() -> None:
    model = nn.Linear(3, 2)
    state = {"weight": torch.zeros(2, 3), "extra": torch.zeros(1)}
    with pytest.raises(ModelLoadError, match=r"missing: bias.*unexpected: extra"):
        apply_state_dict(model, state, "w.safetensors")
    apply_state_dict(model, {"weight": torch.ones(2, 3), "bias": torch.ones(2)}, "w.safetensors")
    assert torch.equal(model.bias.detach(), torch.ones(2))
