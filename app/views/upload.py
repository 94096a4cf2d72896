"""Your model & data: upload a model (weights + architecture, or TorchScript) and a dataset (a zip)."""

import streamlit as st

from essence.app import uploads
from essence.app.components.boundary import run_page
from essence.app.components.prereq import OVERVIEW_PAGE
from essence.app.components.session import recipe


def render() -> None:
    st.title("Your model & data")
    st.caption(
        f"Files up to {uploads.UPLOAD_LIMIT_MB} MB each; a dataset zip may expand to at most "
        f"{uploads.EXTRACT_LIMIT_MB} MB. Uploads are kept beside the store and never leave this machine."
    )
    left, right = st.columns(2)
    with left:
        _model_form()
    with right:
        _data_form()
    st.page_link(OVERVIEW_PAGE, label="Back to the overview", icon=":material/visibility:")


def _model_form() -> None:
    st.subheader("A model")
    with st.form("upload-model"):
        file = st.file_uploader(
            "Weights (.safetensors or a state_dict .pt/.pth) or an exported program (.pt2, torch.export)",
            type=["safetensors", "pt", "pth", "pt2"],
            max_upload_size=uploads.UPLOAD_LIMIT_MB,
        )
        arch = st.selectbox("Architecture", uploads.architectures())
        names = st.text_input("Class names, in output order, comma-separated (empty: the dataset's)")
        layer = st.text_input("Slice (module path, e.g. layer3; empty: choose later)")
        size = st.number_input("Image size (px, square)", 8, 1024, 224)
        blur = st.number_input("Gaussian blur σ (px) applied before the model", 0.0, 50.0, 0.0)
        norm = st.selectbox("Normalisation", ["imagenet", "none"])
        submitted = st.form_submit_button("Add the model", type="primary")
    if not submitted:
        return
    if file is None:
        st.error("Choose a model file first.")
        return
    uploads.check_upload_size(file.size, file.name)
    recipe_ = uploads.recipe_of(int(size), float(blur), norm)
    class_names = [n.strip() for n in names.split(",") if n.strip()] or None
    with st.spinner("Checking the model…"):
        choice = uploads.model_from_upload(
            file.getvalue(), file.name, arch, recipe_, class_names, layer.strip() or None
        )
    state = recipe()
    state.models[choice.label] = choice
    state.model, state.layer, state.cls = choice.label, None, None
    st.success(f"Added {choice.label}; it is now the current model (see the sidebar).")


def _data_form() -> None:
    st.subheader("A dataset")
    with st.form("upload-data"):
        file = st.file_uploader(
            "A zip of an ImageFolder tree (one folder per class) or of a CSV of path,label with its images",
            type=["zip"],
            max_upload_size=uploads.UPLOAD_LIMIT_MB,
        )
        submitted = st.form_submit_button("Add the dataset", type="primary")
    if not submitted:
        return
    if file is None:
        st.error("Choose a zip file first.")
        return
    uploads.check_upload_size(file.size, file.name)
    with st.spinner("Checking the images…"):
        choice = uploads.dataset_from_zip(file.getvalue(), file.name)
    state = recipe()
    state.datasets[choice.label] = choice
    state.data = choice.label
    st.success(f"Added {choice.label} ({choice.spec.split(':', 1)[0]}); it is now the current dataset.")


run_page(render)
