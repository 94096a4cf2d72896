"""Shared tiny fixtures: small deterministic models (batch norm with non-trivial running statistics,
in-place ReLUs, a residual connection), an MLP, a linear model, and random data.

Models are built fresh per test (they are cheap) so a test can never leak state into another.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile

# A suite started in the background by a shell without job control inherits SIGINT ignored, and so would every
# process a test starts (an ignored signal stays ignored across exec): the Ctrl-C tests would then meet processes
# that cannot be interrupted. With Python's own handler back in this process, its children start with the
# default disposition (a handler is reset by exec), as they do under a terminal or CI.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# One intra-op thread for this process and every process a test starts (they inherit the environment), set
# before torch is first imported. The suite's models are tiny: a second thread buys nothing on them, and the
# cores are already busy (one pytest-xdist worker per core, the CLI subprocesses, the app's servers), where
# torch's spinning OpenMP workers only contend: test_matching.py and test_triage.py took 41 s with torch's
# default of 2 threads and 14 s with 1 on a busy 2-core machine. An OMP_NUM_THREADS set in the environment is
# kept (to measure another setting).
THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)
os.environ["OMP_NUM_THREADS"] = str(THREADS)
os.environ.setdefault("MKL_NUM_THREADS", str(THREADS))

# Every process of the suite (each pytest-xdist worker, and what it starts) keeps its default store under a private
# temporary ESSENCE_HOME, removed when it exits; a test that names its own home or store overrides it. The suite
# then never reads or writes the user's own store, and two workers never share one (a CLI test that relied on
# the user's data folder once met a store another test had left damaged there).
HOME = tempfile.mkdtemp(prefix="essence-tests-")
os.environ["ESSENCE_HOME"] = HOME
atexit.register(shutil.rmtree, HOME, ignore_errors=True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(THREADS)

NUM_CLASSES = 3


def _randomise_batch_norm(model: nn.Module, seed: int) -> nn.Module:
    """Give every batch norm non-trivial running statistics and affine parameters.

    A freshly initialised batch norm (mean 0, var 1, weight 1, bias 0) makes a ReLU network positively
    homogeneous, so the gradient at x/2 equals the one at x: path distributions would hide bugs.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.3)
    return model


class ResidualBlock(nn.Module):
    """conv-bn-relu(inplace)-conv-bn + skip, then an in-place ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(y + x)


class TinyCNN(nn.Module):
    """Input ``[B, 3, 8, 8]`` → logits ``[B, num_classes]``.

    Slices worth naming: ``stem`` (conv, an in-place ReLU right above it), ``block`` (residual),
    ``block.conv2``, ``head`` (conv), ``fc``.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, channels: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.block = ResidualBlock(channels)
        self.head = nn.Conv2d(channels, 8, 3, stride=2, padding=1)
        self.act = nn.Softplus()  # smooth: path integrals converge fast, completeness is checkable
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.stem(x)))
        x = self.block(x)
        x = self.act(self.head(x))
        return self.fc(self.flatten(self.pool(x)))


class TinyMLP(nn.Module):
    """Input ``[B, 12]`` → logits ``[B, 4]``; slices ``fc1``, ``bn``, ``fc2``, ``out``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 16)
        self.bn = nn.BatchNorm1d(16)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(16, 10)
        self.tanh = nn.Tanh()
        self.out = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.tanh(self.fc2(self.relu(self.bn(self.fc1(x))))))


def make_cnn(seed: int = 0, num_classes: int = NUM_CLASSES) -> TinyCNN:
    torch.manual_seed(seed)
    return _randomise_batch_norm(TinyCNN(num_classes), seed + 100).eval()


def make_mlp(seed: int = 0) -> TinyMLP:
    torch.manual_seed(seed)
    return _randomise_batch_norm(TinyMLP(), seed + 100).eval()


def cnn_data(n: int = 18, num_classes: int = NUM_CLASSES, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [n, 3, 8, 8]`` and labels ``[n]`` covering every class."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=gen)
    y = torch.arange(n) % num_classes
    return x, y


def mlp_data(n: int = 20, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 12, generator=gen), torch.arange(n) % 4


@pytest.fixture
def cnn() -> TinyCNN:
    return make_cnn()


@pytest.fixture
def mlp() -> TinyMLP:
    return make_mlp()


@pytest.fixture
def linear() -> nn.Linear:
    torch.manual_seed(3)
    return nn.Linear(5, 3).eval()


@pytest.fixture
def cnn_xy() -> tuple[torch.Tensor, torch.Tensor]:
    return cnn_data()


@pytest.fixture
def mlp_xy() -> tuple[torch.Tensor, torch.Tensor]:
    return mlp_data()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# Factories and helpers as (stateless, session-scoped) fixtures: test modules never import conftest, so
# whether tests/ is a package or not does not matter, and hypothesis tests may use them.
@pytest.fixture(scope="session")
def cnn_factory():
    return make_cnn


@pytest.fixture(scope="session")
def mlp_factory():
    return make_mlp


@pytest.fixture(scope="session")
def data_factory():
    return cnn_data


@pytest.fixture(scope="session")
def rel_close():
    return assert_rel_close


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    """``max |a − e| ≤ tol · max |e|``: relative to the scale of the expected values.

    Element-wise relative error is meaningless for entries that are zero up to rounding (a dead ReLU), so
    the error is measured against the largest expected magnitude.
    """
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    err = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert err <= tol * max(scale, 1e-12), f"max abs error {err:.3g} > {tol:g} × scale {scale:.3g}"


# The files that take longest, longest first (measured on 2 cores). Under pytest-xdist (`make test`) whole files
# are handed to the workers in collection order: starting with these, the workers finish close together instead
# of one of them starting a long file when the other has nothing left. A serial run keeps pytest's order.
LONGEST_FIRST = (
    "tests/app/test_review_desk_browser.py",
    "tests/app/test_browser.py",
    "tests/reliability/test_faults.py",
    "tests/app/test_review_desk.py",
    "tests/app/test_pages.py",
    "tests/cli/test_formats_cli.py",
    "tests/cli/test_class_order_formats.py",
    "tests/reliability/test_cli_faults.py",
    "tests/cli/test_readme_walkthrough.py",
    "tests/scale/test_distributed.py",
    "tests/reliability/test_catalogue.py",
    "tests/sample_data/test_build.py",
    "tests/core/test_diagnosis.py",
    "tests/reliability/test_process_and_args.py",
    "tests/app/test_triage_shortcuts.py",
    "tests/cli/test_profile.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):  # not an xdist worker
        return
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    root = config.rootpath
    items.sort(key=lambda item: rank.get(item.path.relative_to(root).as_posix(), len(rank)))  # stable
