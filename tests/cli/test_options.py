"""The CLI's shared options: choices equal to core's, refused while parsing, and option groups that round-trip."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import typer

from essence.cli import app, main, options
from essence.cli.options import InputOptions, with_option_groups
from essence.cli.profile import ProfileRequest


def test_the_choices_are_cores() -> None:
    """Declared in the CLI so that parsing needs no PyTorch; equal to core's lists, in the same order."""
    from essence.core.analyses.interpret import METHODS
    from essence.core.analyses.matching import MatchMode
    from essence.core.analyses.triage import SCORES
    from essence.core.engine.quantities import Kind
    from essence.core.engine.slices import GRANULARITIES
    from essence.core.inputs.preprocessing import Preprocessing

    assert typing.get_args(Kind) == options.KINDS
    assert options.GRANULARITIES == GRANULARITIES
    assert options.SCORES == SCORES
    assert options.METHODS == METHODS
    assert typing.get_args(MatchMode) == options.MATCH_MODES
    assert typing.get_args(typing.get_type_hints(Preprocessing)["mode"]) == options.IMAGE_MODES


M, D = ("--model", "demo:blurred"), ("--data", "digits")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        *[
            ((cmd, *M, *D, "--kind", "bogus"), "--kind 'bogus'")
            for cmd in ("profile", "precompute", "triage")
        ],
        (("experts", *M, *D, "--class", "0", "--kind", "bogus"), "--kind 'bogus'"),
        (("compare", *M, "--against", "demo:sharp", *D, "--kind", "bogus"), "--kind 'bogus'"),
        (("explain", *M, "--image", "x.png", "--class", "0", "--kind", "bogus"), "--kind 'bogus'"),
        (("layers", *M, "--kind", "bogus"), "--kind 'bogus'"),
        *[
            ((cmd, *M, *D, "--granularity", "pixel"), "--granularity 'pixel'")
            for cmd in ("profile", "precompute", "triage", "diagnose", "layers")
        ],
        (("triage", *M, *D, "--score", "vibes"), "--score 'vibes'"),
        (("compare", *M, "--against", "demo:sharp", *D, "--match", "best"), "--match 'best'"),
        (("explain", *M, "--image", "x.png", "--class", "0", "--method", "lrp"), "--method 'lrp'"),
        (("card", *M, "--mode", "CMYK"), "--mode 'CMYK'"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_a_value_outside_the_choices_is_refused_while_parsing(args, says, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert "is not known: use" in err[0]


def test_a_profile_request_round_trips_through_its_command_line(monkeypatch) -> None:
    """A sharded run hands each process the request as options: they must read back as the same request."""
    request = ProfileRequest(
        InputOptions(
            model="pkg.mod:net",
            data="npz:x.npz",
            weights=Path("w.safetensors"),
            trust_pickle=True,
            layer="fc1",
            class_names="a,b",
            size=(32, 24),
            blur=1.5,
            recipe=Path("r.json"),
            skip_bad=True,
        ),
        granularity="neuron",
        kind="prob",
        device="cpu",
        batch_size=7,
        json_path=Path("out.json"),
        store="s.sqlite",
        allow_empty=True,
    )
    got: list[ProfileRequest] = []
    monkeypatch.setattr("essence.cli.profile.run_profiles", lambda r, **_: got.append(r))
    main(["profile", *request.to_args()])
    assert got == [request]
    got.clear()
    main(["profile", "--model", "m", "--data", "d"])  # the defaults are the dataclass's
    assert got == [ProfileRequest(InputOptions(model="m", data="d"))]


def test_profile_and_precompute_take_the_same_request_options() -> None:
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    flags = {name: {o for p in commands[name].params for o in p.opts} for name in ("profile", "precompute")}
    assert {"--model", "--size", "--granularity", "--allow-empty"} <= flags["profile"] & flags["precompute"]
    assert flags["profile"] - flags["precompute"] == {"--no-cache"}


def test_an_option_named_twice_is_refused_when_the_command_is_declared() -> None:
    def twice(inputs: InputOptions, model: str = "x") -> None:
        """Takes --model twice."""

    with pytest.raises(TypeError, match="model"):
        with_option_groups(twice)
