"""gitward.processes: a time limit that holds even when the program's children keep the pipes open."""

from __future__ import annotations

import os
import time

from gitward import processes


def test_a_program_and_its_children_are_killed_at_the_limit(tmp_path):
    """A shell whose background child holds stdout returns at the limit, and the child is gone too."""
    pid_file = tmp_path / "child.pid"
    started = time.monotonic()
    done = processes.run(
        ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], env={"PATH": os.environ["PATH"]}, timeout=0.5
    )
    assert done.timed_out
    assert time.monotonic() - started < 5
    child = int(pid_file.read_text())
    time.sleep(0.2)
    assert not running(child)


def running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan may wait for a reaper that never comes in a container)."""
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]  # noqa: PTH123, SIM115
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_program_gets_exactly_the_environment_given():
    """Nothing of the caller's environment leaks into the program."""
    os.environ["GITWARD_SHOULD_NOT_LEAK"] = "1"
    try:
        done = processes.run(["env"], env={"PATH": os.environ["PATH"], "ONLY": "this"}, timeout=10)
    finally:
        del os.environ["GITWARD_SHOULD_NOT_LEAK"]
    assert done.code == 0
    assert sorted(done.stdout.decode().split()) == sorted([f"PATH={os.environ['PATH']}", "ONLY=this"])
