"""Your model & data: upload a model (weights + architecture, or TorchScript) and a dataset (a zip).

Uploads are registered in the store, so every later session offers them again until they are removed here.
"""

import streamlit as st

from essence.app import registry, uploads
from essence.app.components.boundary import run_page
from essence.app.components.prereq import OVERVIEW_PAGE
from essence.app.components.session import recipe
from essence.app.components.text import for_people, plain
from essence.app.state import DEMO_DATA, DEMO_MODEL
from essence.core.base.errors import EssenceError


def render() -> None:
    st.title("Your model & data")
    st.caption(
        f"Files up to {uploads.UPLOAD_LIMIT_MB} MB each; a dataset zip may expand to at most "
        f"{uploads.EXTRACT_LIMIT_MB} MB. Uploads are kept beside the store, offered in every later session until "
        "you remove them, and never leave this machine."
    )
    state = recipe()
    if state.notice:
        st.success(state.notice, icon=":material/check:")
        state.notice = ""
    left, right = st.columns(2)
    with left:
        _shown_errors(_model_form)
    with right:
        _shown_errors(_data_form)
    _registered()
    st.page_link(OVERVIEW_PAGE, label="Back to the overview", icon=":material/visibility:")


def _shown_errors(form) -> None:
    """Draw a form; a problem with what was uploaded is a message under it, and the other form stays."""
    try:
        form()
    except EssenceError as exc:
        st.error(plain(for_people(str(exc), uploads.uploads_root())), icon=":material/warning:")


def _model_form() -> None:
    st.subheader("A model")
    with st.form("upload-model"):
        file = st.file_uploader(
            "Weights (.safetensors or a state_dict .pt/.pth), an exported program (.pt2, torch.export) or an "
            "ONNX model (.onnx)",
            type=["safetensors", "pt", "pth", "pt2", "onnx"],
            max_upload_size=uploads.UPLOAD_LIMIT_MB,
            key="upload-model-file",
        )
        arch = st.selectbox("Architecture", uploads.architectures(), key="upload-model-arch")
        library = st.text_input(
            "timm or MONAI architecture, with the choice above (e.g. timm:resnet18, monai:DenseNet121)",
            key="upload-model-library",
        )
        names = st.text_input(
            "Class names, in output order, comma-separated (empty: the dataset's)", key="upload-model-names"
        )
        layer = st.text_input(
            "Slice (module path, e.g. layer3; empty: choose later)", key="upload-model-layer"
        )
        size = st.number_input("Image size (px, square)", 8, 1024, 224, key="upload-model-size")
        blur = st.number_input(
            "Gaussian blur σ (px) applied before the model", 0.0, 50.0, 0.0, key="upload-model-blur"
        )
        norm = st.selectbox("Normalisation", ["imagenet", "none"], key="upload-model-norm")
        colour = st.selectbox(
            "Image channels the model takes",
            ["RGB (colour)", "L (greyscale, one channel)"],
            key="upload-model-mode",
        )
        trust = st.checkbox(
            "Trust this pickle (a full pickle can run any code on this server when read)",
            key="upload-model-trust",
            help="Only for a file from a source you trust. Weights as .safetensors or a state_dict need no trust.",
        )
        submitted = st.form_submit_button("Add the model", type="primary")
    if not submitted:
        return
    if file is None:
        st.error("Choose a model file first.")
        return
    if trust:
        st.warning(
            "Reading this file as a full pickle: it could run code on this server. Only do this for a file "
            "from a source you trust.",
            icon=":material/gpp_maybe:",
        )
    uploads.check_upload_size(file.size, file.name)
    recipe_ = uploads.recipe_of(int(size), float(blur), norm, colour.split(" ")[0])
    class_names = [n.strip() for n in names.split(",") if n.strip()] or None
    with st.spinner("Checking the model…"):
        choice = uploads.model_from_upload(
            file.getvalue(),
            file.name,
            library.strip() if arch == uploads.LIBRARY and library.strip() else arch,
            recipe_,
            class_names,
            layer.strip() or None,
            trust_pickle=trust,
        )
    registry.register_model(choice)
    state = recipe()
    state.models[choice.label] = choice
    state.model, state.layer, state.cls, state.triage_position = choice.label, None, None, 0
    state.notice = f"Added {plain(choice.label)}; it is now the current model (see the sidebar)."
    st.rerun()  # the sidebar, drawn before this page, shows the new model on the next run


def _data_form() -> None:
    st.subheader("A dataset")
    with st.form("upload-data"):
        file = st.file_uploader(
            "A zip of an ImageFolder tree (one folder per class) or of a CSV of path,label with its images; "
            "DICOM files (.dcm) alike",
            type=["zip"],
            max_upload_size=uploads.UPLOAD_LIMIT_MB,
            key="upload-data-file",
        )
        skip = st.checkbox(
            "Skip unreadable images (leave them out instead of refusing the dataset)", key="upload-data-skip"
        )
        submitted = st.form_submit_button("Add the dataset", type="primary")
    if not submitted:
        return
    if file is None:
        st.error("Choose a zip file first.")
        return
    uploads.check_upload_size(file.size, file.name)
    with st.spinner("Checking the images…"):
        choice = uploads.dataset_from_zip(file.getvalue(), file.name, skip_bad_images=skip)
    registry.register_dataset(choice)
    state = recipe()
    state.datasets[choice.label] = choice
    state.data, state.triage_position, state.explain_index = choice.label, 0, 0
    kind = "a CSV of path,label" if choice.spec.startswith("csv:") else "class folders"
    state.notice = f"Added {plain(choice.label)} ({kind}); it is now the current dataset (see the sidebar)."
    st.rerun()


def _registered() -> None:
    """The uploads this store keeps, each with a button that removes it from every session's lists and deletes
    its files."""
    models = [c.label for c in registry.saved_models()]
    datasets = [c.label for c in registry.saved_datasets()]
    st.subheader("Your uploads")
    if not models and not datasets:
        st.caption("None yet: what you add above is kept here, for every session, until you remove it.")
        return
    for kind, labels in (("model", models), ("dataset", datasets)):
        for i, label in enumerate(labels):
            left, right = st.columns([4, 1])
            left.text(f"{kind}: {label}")
            if right.button("Remove", key=f"upload-remove-{kind}-{i}"):
                registry.forget(kind, label)
                state = recipe()
                if kind == "model" and state.model == label:
                    state.model, state.layer, state.cls = DEMO_MODEL, None, None
                if kind == "dataset" and state.data == label:
                    state.data, state.triage_position, state.explain_index = DEMO_DATA, 0, 0
                state.notice = (
                    f"Removed {plain(label)} and deleted its uploaded files (those another upload still uses "
                    "are kept until it is removed too)."
                )
                st.rerun()


run_page(render)
