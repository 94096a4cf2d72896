"""Fixtures of the store's tests: a store URL per backend (SQLite always; PostgreSQL when
``ESSENCE_TEST_DATABASE_URL`` is set, each test in a schema of its own), and tiny models and datasets."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from torch import nn

from essence.core.inputs.data import ImageData, hash_arrays
from essence.core.inputs.model_fingerprints import model_fingerprint
from essence.core.inputs.models import LoadedModel
from essence.core.inputs.preprocessing import Preprocessing

PG_SKIP = "PostgreSQL store tests need ESSENCE_TEST_DATABASE_URL (set by .ci/postgres.sh, used by .ci/run)"


def postgres_url() -> str | None:
    return os.environ.get("ESSENCE_TEST_DATABASE_URL") or None


@pytest.fixture
def pg_schema_url() -> Iterator[Callable[[], str]]:
    """Makes URLs of fresh, empty PostgreSQL schemas (dropped after the test)."""
    url = postgres_url()
    if url is None:
        pytest.skip(PG_SKIP)
    engine = create_engine(url)
    made: list[str] = []

    def make() -> str:
        schema = "t_" + uuid.uuid4().hex[:12]
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        made.append(schema)
        scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
        return scoped.render_as_string(hide_password=False)

    yield make
    with engine.begin() as conn:
        for schema in made:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> str:
    """A location for a new store: a SQLite file, or an empty PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "store" / "essence.sqlite")
    return request.getfixturevalue("pg_schema_url")()


class TinyNet(nn.Module):
    """``[B, 3, 4, 4]`` → ``[B, 3]``; slices ``conv`` (channel granularity sums 4 positions) and ``fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.act = nn.Softplus()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.pool(self.act(self.conv(x)))))


class Exploding(nn.Module):
    """A model that must not be run: any forward fails the test."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model was run although the store had the answer")


def tiny_model(seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    module = TinyNet().eval()
    return LoadedModel(
        module, "test:tiny", model_fingerprint(module, "test:tiny"), class_names=["a", "b", "c"]
    )


def tiny_data(seed: int = 1, n: int = 15) -> ImageData:
    images = np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(n) % 3
    return ImageData(
        "test:tiny", labels, ["a", "b", "c"], Preprocessing(), hash_arrays(images, labels), arrays=images
    )


@pytest.fixture
def model() -> LoadedModel:
    return tiny_model()


@pytest.fixture
def data() -> ImageData:
    return tiny_data()


@pytest.fixture
def make_model() -> Callable[..., LoadedModel]:
    return tiny_model


@pytest.fixture
def make_data() -> Callable[..., ImageData]:
    return tiny_data


@pytest.fixture
def exploding() -> Callable[[LoadedModel], LoadedModel]:
    """The same model (same fingerprint) whose forward raises: proves an answer came from the store."""

    def make(m: LoadedModel) -> LoadedModel:
        return LoadedModel(Exploding(), m.spec, m.fingerprint, class_names=m.class_names)

    return make
