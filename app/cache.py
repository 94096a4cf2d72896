"""Streamlit's side of what the app shares: one copy per process, cleared with Streamlit's resource cache.

The store handle, the result table and the models' locks are held with ``st.cache_resource`` and handed to the
services through :func:`install` (the entry file calls it). Loaded models and datasets are cached here too, on
hashable keys (spec, weights, recipe): ``st.cache_resource`` keeps one object for every session and never
copies it, which is what tensors need (``st.cache_data`` would copy and sample-hash them on every hit).
"""

from __future__ import annotations

import dataclasses

import streamlit as st

from essence.app import loading, shared
from essence.app.shared import ModelLocks, Results, Shared
from essence.app.state import DataChoice, ModelChoice
from essence.core import ImageData, LoadedModel
from essence.storage import Store, default_store_path


@st.cache_resource(show_spinner=False)
def _store_at(location: str) -> Store:
    return Store.open(location)


@st.cache_resource(show_spinner=False)
def _results() -> Results:
    return Results()


@st.cache_resource(show_spinner=False)
def _locks() -> ModelLocks:
    return ModelLocks()


def resources() -> Shared:
    """The process's shared resources (the store of ``$ESSENCE_HOME``, read at each call)."""
    return Shared(_store_at(str(default_store_path())), _results(), _locks())


def install() -> None:
    """Make the services use :func:`resources` (idempotent; the entry file calls it on every run)."""
    shared.provide(resources)


@st.cache_resource(show_spinner="Loading the model…", max_entries=8)
def _load_model(choice: ModelChoice) -> LoadedModel:
    return loading.open_model(choice)


def model_of(choice: ModelChoice) -> LoadedModel:
    """The loaded model of a sidebar choice (cached for every session, whatever the choice's label).

    Raises:
        ModelLoadError, SpecError: the model cannot be loaded.
    """
    return _load_model(dataclasses.replace(choice, label=""))


@st.cache_resource(show_spinner="Loading the images…", max_entries=8)
def _load_data(spec: str, recipe: str, class_names: tuple[str, ...] | None) -> ImageData:
    return loading.open_data(spec, recipe, class_names)


def data_for(choice: DataChoice, model: LoadedModel) -> ImageData:
    """The dataset of a sidebar choice with the model's preprocessing, checked to fit the model.

    Raises:
        DataLoadError, LabelMismatchError, SpecError: the data cannot be read or does not fit the model.
    """
    names = tuple(model.class_names) if model.class_names else None
    data = _load_data(choice.spec, loading.recipe_of(model), names)
    loading.check_fits(model, data)
    return data
