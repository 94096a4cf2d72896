"""The catalogue's families through the app's upload page, driven with AppTest.

For every bad upload: an error message on the page that names the problem, never an exception box nor the
internal-error message; the current model and dataset stay what they were; a pickle's payload never runs;
nothing is left extracted outside the uploads folder.
"""

from __future__ import annotations

import io
import os
import pickle
import stat
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import streamlit as st
import torch
from reliability_helpers import FACTORY_SOURCE, PICKLE_PAYLOAD, images_and_labels, png_bytes, png_header_bomb
from streamlit.testing.v1 import AppTest

from essence.app import uploads
from essence.app.components.boundary import INTERNAL_ERROR
from essence.app.state import STATE_KEY

ENTRY = Path(__file__).resolve().parents[2] / "app" / "main.py"
TORCHSCRIPT = uploads.TORCHSCRIPT


def zip_of(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return buf.getvalue()


def tree(extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """An ImageFolder tree of 6 good 8×8 images in classes a and b, plus ``extra`` members."""
    images, _ = images_and_labels(6)
    members = {f"data/{'ab'[i % 2]}/{i}.png": png_bytes(img) for i, img in enumerate(images)}
    return {**members, **(extra or {})}


@dataclass(frozen=True)
class Files:
    root: Path
    sentinel: Path
    evil_pickle: bytes
    evil_state: bytes
    script: bytes
    tiny_weights: bytes
    torchscript: bytes


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("app_files")
    sentinel = root / "PAYLOAD_RAN"
    (root / "app_payload.py").write_text(PICKLE_PAYLOAD.format(sentinel=sentinel))
    (root / "app_factory.py").write_text(FACTORY_SOURCE)
    sys.path.insert(0, str(root))
    try:
        import app_factory
        import app_payload

        evil_pickle = pickle.dumps(app_payload.Payload())
        buf = io.BytesIO()
        torch.save({"conv1.weight": app_payload.Payload()}, buf)
        evil_state = buf.getvalue()
        model = app_factory.cnn().eval()
        buf = io.BytesIO()
        program = torch.export.export(model, (torch.randn(2, 3, 8, 8),))
        torch.export.save(program, buf)  # a whole model the app can analyse (TorchScript is refused)
        script = buf.getvalue()
        buf = io.BytesIO()
        torch.jit.save(torch.jit.script(model), buf)
        torchscript = buf.getvalue()
        from safetensors.torch import save

        tiny_weights = save({k: v.contiguous() for k, v in model.state_dict().items()})
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("app_payload", None)
        sys.modules.pop("app_factory", None)
    (root / "app_payload.py").unlink()
    return Files(root, sentinel, evil_pickle, evil_state, script, tiny_weights, torchscript)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppTest]:
    """One app on the upload page for the whole module (opening it is the slow part), private ESSENCE_HOME."""
    home = tmp_path_factory.mktemp("app_home")
    old = os.environ.get("ESSENCE_HOME")
    os.environ["ESSENCE_HOME"] = str(home)
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(str(ENTRY), default_timeout=180)
    at.switch_page("views/upload.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    yield at
    st.cache_resource.clear()
    st.cache_data.clear()
    if old is None:
        os.environ.pop("ESSENCE_HOME", None)
    else:
        os.environ["ESSENCE_HOME"] = old


def _widget(items, label: str):
    for w in items:
        if w.label.startswith(label):
            return w
    raise AssertionError(f"no widget labelled {label!r}: {[w.label for w in items]}")


def _shown_errors(at: AppTest) -> list[str]:
    assert not at.exception, [e.value for e in at.exception]
    errors = [str(e.value) for e in at.error]
    assert not any(INTERNAL_ERROR in e for e in errors), errors
    return errors


def _current(at: AppTest) -> tuple[str | None, str | None]:
    state = at.session_state[STATE_KEY]
    return state.model, state.data


DATASETS = {
    "not a zip": (b"PK\x03\x04 this is not really a zip", "not a zip file"),
    "empty zip": (zip_of({}), "holds no files"),
    "../ member": (zip_of(tree({"../../escaped.png": b"x"})), "points outside the archive"),
    "absolute member": (zip_of(tree({"/tmp/escaped.png": b"x"})), "points outside the archive"),
    "symlink member": (zip_of(tree(), links={"data/a/link.png": "/etc/passwd"}), "symbolic link"),
    "no class folders": (zip_of({"readme.txt": b"hello"}), "neither class folders nor a CSV"),
    "truncated image": (zip_of(tree({"data/a/t.png": png_bytes(images_and_labels(1)[0][0])[:60]})), "t.png"),
    "not an image": (zip_of(tree({"data/b/notes.png": b"meeting notes"})), "notes.png"),
    "decompression bomb": (zip_of(tree({"data/a/bomb.png": png_header_bomb()})), "bomb.png"),
    "CSV naming missing files": (
        zip_of(
            {"d/img0.png": png_bytes(images_and_labels(1)[0][0]), "d/labels.csv": b"img0.png,a\nnope.png,b\n"}
        ),
        "nope.png",
    ),
    "CSV with ../ path": (
        zip_of(
            {
                "d/img0.png": png_bytes(images_and_labels(1)[0][0]),
                "d/labels.csv": b"img0.png,a\n../../x.png,b\n",
            }
        ),
        "outside the data root",
    ),
    "CSV with absolute path": (
        zip_of(
            {
                "d/img0.png": png_bytes(images_and_labels(1)[0][0]),
                "d/labels.csv": b"img0.png,a\n/etc/hosts,b\n",
            }
        ),
        "outside the data root",
    ),
    "several CSVs": (zip_of({"a.csv": b"x,1\n", "b.csv": b"y,2\n"}), "several CSV files"),
}


@pytest.mark.parametrize("name", list(DATASETS))
def test_a_bad_dataset_upload_is_a_message(app: AppTest, name: str) -> None:
    data, fragment = DATASETS[name]
    before = _current(app)
    app.file_uploader[1].set_value((f"{name}.zip", data, "application/zip"))
    _widget(app.button, "Add the dataset").click().run()
    errors = _shown_errors(app)
    assert any(fragment in e for e in errors), (fragment, errors)
    assert _current(app) == before
    home = Path(os.environ["ESSENCE_HOME"])
    assert not list(home.parent.glob("escaped.png")) and not (Path("/tmp") / "escaped.png").exists()


def test_an_upload_over_the_limit_is_a_message(app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    # AppTest does not enforce Streamlit's server.maxUploadSize: the app's own check must.
    # Only the byte limit of the app's own check: the widget's max_upload_size (the server's figure, which
    # AppTest applies by dropping the file) stays above it, so that the app's check is what answers.
    monkeypatch.setattr(uploads, "UPLOAD_LIMIT", 1024 * 1024)
    app.file_uploader[1].set_value(("big.zip", zip_of(tree()) + b"\0" * (1024 * 1024), "application/zip"))
    _widget(app.button, "Add the dataset").click().run()
    assert any("upload limit" in e and "big.zip" in e for e in _shown_errors(app))


def test_a_zip_bomb_is_a_message(app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uploads, "EXTRACT_LIMIT_MB", 1)
    bomb = zip_of(tree({"data/a/big.bin": b"\0" * (3 * 1024 * 1024)}))  # a few kB, 3 MB extracted
    app.file_uploader[1].set_value(("bomb.zip", bomb, "application/zip"))
    _widget(app.button, "Add the dataset").click().run()
    assert any("expands to more than 1 MB" in e for e in _shown_errors(app))


MODELS = {
    # name: (file name, bytes attribute of Files or literal bytes, architecture, layer, fragment)
    "pickle payload as TorchScript": ("model.pt", "evil_pickle", TORCHSCRIPT, "", "full pickle"),
    "pickle payload as weights": ("weights.pt", "evil_state", "resnet18", "", "full pickle"),
    "text file as TorchScript": ("model.pt", b"just some text\n", TORCHSCRIPT, "", "model.pt"),
    "fake TorchScript zip": (
        "model.pt",
        zip_of({"m/data.pkl": b"nope", "m/code/__torch__.py": b"x"}),
        TORCHSCRIPT,
        "",
        "model.pt",
    ),
    "weights of another architecture": ("w.safetensors", "tiny_weights", "resnet18", "", "do not fit"),
    "garbage safetensors": ("w.safetensors", b"\x08\0\0\0\0\0\0\0{garbage", "resnet18", "", "safetensors"),
    "weights without an architecture": ("w.safetensors", "tiny_weights", TORCHSCRIPT, "", "weights only"),
    "wrong slice name": ("model.pt2", "script", TORCHSCRIPT, "fc9", "'fc9'"),
    "TorchScript, which no analysis can hook": ("model.pt", "torchscript", TORCHSCRIPT, "", "torch.export"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_a_bad_model_upload_is_a_message(app: AppTest, files: Files, name: str) -> None:
    file_name, content, arch, layer, fragment = MODELS[name]
    data = getattr(files, content) if isinstance(content, str) else content
    before = _current(app)
    app.file_uploader[0].set_value((file_name, data, "application/octet-stream"))
    _widget(app.selectbox, "Architecture").set_value(arch)
    _widget(app.text_input, "Slice").set_value(layer)
    _widget(app.button, "Add the model").click().run()
    errors = _shown_errors(app)
    assert any(fragment in e for e in errors), (fragment, errors)
    assert _current(app) == before
    assert not files.sentinel.exists(), "the pickle's payload ran"


def test_a_good_torchscript_upload_still_works(app: AppTest, files: Files) -> None:
    """The control: the same form takes a valid model, so the messages above are about the files."""
    app.file_uploader[0].set_value(("tiny.pt2", files.script, "application/octet-stream"))
    _widget(app.selectbox, "Architecture").set_value(TORCHSCRIPT)
    _widget(app.text_input, "Slice").set_value("fc1")
    _widget(app.button, "Add the model").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert any("Added tiny.pt" in str(s.value) for s in app.success), [e.value for e in app.error]
