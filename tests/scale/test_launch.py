"""The local launcher: torchrun's variables, the first failure named, the others stopped, the output kept."""

from __future__ import annotations

import sys
import textwrap
import time

import pytest

from essence.core.base.errors import SpecError
from essence.core.scale.distributed import PEER_FAILED
from essence.core.scale.launch import _error_line, launch_local


def program(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def test_launcher_refuses_zero_processes():
    with pytest.raises(SpecError, match="at least 1"):
        launch_local([sys.executable, "-c", "pass"], 0)


def test_every_process_gets_torchruns_variables_and_rank_0s_output_is_kept():
    result = launch_local(
        program(
            """
            import os, sys
            keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")
            print(" ".join(os.environ[k] for k in keys), int(os.environ["MASTER_PORT"]) > 0)
            print("rank", os.environ["RANK"], file=sys.stderr)
            """
        ),
        3,
        threads=2,
    )
    assert result.returncode == 0 and result.failed_rank is None and result.message == ""
    assert result.stdout.split() == ["0", "3", "0", "3", "127.0.0.1", "True"]
    assert [s.strip() for s in result.stderr] == ["rank 0", "rank 1", "rank 2"]


def test_the_first_own_failure_is_named_not_its_echo_and_the_others_are_stopped():
    start = time.monotonic()
    result = launch_local(
        program(
            f"""
            import os, sys, time
            rank = int(os.environ["RANK"])
            if rank == 0:  # the echo of rank 1's failure, seen first
                print("error: process 0 of 3: {PEER_FAILED} stopped", file=sys.stderr)
                sys.exit(2)
            if rank == 1:  # the cause, a little later but within the grace period
                time.sleep(0.3)
                print("Traceback ...\\nerror: the weights file is missing; pass --weights", file=sys.stderr)
                sys.exit(2)
            time.sleep(60)  # rank 2 would wait for ever: the launcher stops it
            """
        ),
        3,
        grace_s=1.0,
    )
    assert time.monotonic() - start < 30
    assert result.returncode == 2 and result.failed_rank == 1
    assert result.message == "process 1 of 3: the weights file is missing; pass --weights"


def test_a_killed_process_is_named_with_its_signal():
    result = launch_local(program("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"), 1)
    assert result.returncode == 1 and result.failed_rank == 0
    assert result.message == "process 0 of 1: was killed by signal 9"


def test_the_error_line_is_the_last_marked_line_else_the_last_line():
    assert _error_line("warning\nerror: first\nerror: second cause\n") == "second cause"
    assert _error_line("Traceback\n  ...\nRuntimeError: boom\n\n") == "RuntimeError: boom"
    assert _error_line("  \n") is None
