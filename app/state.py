"""The recipe's state: one typed object, kept under one ``session_state`` key (see ``components.session``).

Widget keys vanish from ``st.session_state`` when a page does not draw them, so nothing the recipe needs
lives in a widget key: widgets read their defaults from this object and write their choices back into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STATE_KEY = "essence_recipe"

DEMO_MODEL = "demo:blurred"
DEMO_RETRAINED = "demo:sharp"
DEMO_DATA = "demo:test"


@dataclass(frozen=True)
class ModelChoice:
    """A model the user can pick: a spec, and for uploads the saved weights and architecture.

    Attributes:
        label: what the sidebar shows.
        spec: the model spec (``demo:blurred``, ``torchvision:resnet18``, a TorchScript path).
        weights: the weights file (uploads of a state_dict or safetensors), else ``None``.
        class_names: names given with an upload (``None``: the model's own, or the data's).
        preprocessing: a recipe given with an upload, as a dict (``None``: the model's own).
        default_layer: the slice given with an upload (``None``: the model's own, or pick one).
        trust_pickle: the upload is a full pickle its uploader chose to trust (read with code execution).
    """

    label: str
    spec: str
    weights: str | None = None
    class_names: tuple[str, ...] | None = None
    preprocessing: tuple[tuple[str, object], ...] | None = None
    default_layer: str | None = None
    trust_pickle: bool = False


@dataclass(frozen=True)
class DataChoice:
    """A dataset the user can pick: a label and its data spec (``demo:test``, ``folder:PATH``, ``csv:PATH``)."""

    label: str
    spec: str


@dataclass
class RecipeState:
    """Where the user stands in the recipe.

    Attributes:
        model: label of the current model (a key of ``models``).
        data: label of the current dataset (a key of ``datasets``).
        layer: the slice, ``None`` until chosen (the model's default slice is used when it has one).
        cls: the class the recipe is looking at (index), ``None`` until chosen.
        compare_with: label of model B on the compare page.
        reviewer: who records triage verdicts (asked once per session).
        triage_position: the instance the triage queue is at (a position in the filtered queue).
        triage_classes: classes the triage queue shows (empty: all).
        triage_verdict: which verdicts the queue shows (``"all"``, ``"unreviewed"`` or a verdict).
        triage_open: the image (dataset index) to open on the next run: the one that came after the image a
            verdict was just given to, wherever the verdict moved it in the filtered queue (``None``: stay).
        triage_preset: the class filter holds the class chosen on another page (said on the page, clearable).
        triage_cls_seen: the page class the class filter last followed (a class cleared stays cleared).
        last_saved: what the last verdict button saved (shown once on the next run).
        explain_index: the dataset instance the explain page shows.
        cancelled: cache keys of long computations the user cancelled (not restarted by themselves).
        suggesting: the sidebar's layer scores were asked for (shown until a layer is picked from them).
        notice: a message for the next run (what an upload added), shown once.
        profiles_view: the Class profiles page's view (``"one"`` class or ``"all"`` classes).
        models, datasets: every model and dataset the user can pick (the demo's, then uploads).
    """

    model: str = DEMO_MODEL
    data: str = DEMO_DATA
    layer: str | None = None
    cls: int | None = None
    compare_with: str | None = None
    reviewer: str = ""
    triage_position: int = 0
    triage_classes: list[int] = field(default_factory=list)
    triage_verdict: str = "all"
    triage_open: int | None = None
    triage_preset: bool = False
    triage_cls_seen: int | None = None
    last_saved: str = ""
    explain_index: int = 0
    cancelled: set[str] = field(default_factory=set)
    suggesting: bool = False
    notice: str = ""
    profiles_view: str = "all"
    models: dict[str, ModelChoice] = field(default_factory=dict)
    datasets: dict[str, DataChoice] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for spec in (DEMO_MODEL, DEMO_RETRAINED):
            self.models.setdefault(spec, ModelChoice(label=spec, spec=spec))
        for spec in ("demo:test", "demo:val", "demo:train"):
            self.datasets.setdefault(spec, DataChoice(label=spec, spec=spec))

    @property
    def model_choice(self) -> ModelChoice:
        return self.models[self.model]

    @property
    def data_choice(self) -> DataChoice:
        return self.datasets[self.data]
