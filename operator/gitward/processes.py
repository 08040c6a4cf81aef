"""Running a program with a time limit that really holds.

``subprocess.run(timeout=...)`` kills only the direct child; git's
``git-remote-https`` or ``ssh``, or a tool's helpers, keep the pipes open
and the call hangs anyway. Here every program starts in its own process
group, and on timeout the whole group is killed. Used by the only modules
that start programs: ``source.git`` (git), ``trust.tools`` (gpg,
ssh-keygen) and ``render.kustomize`` (kustomize).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Finished:
    """How a program ended: its exit code (None if it was killed at the time limit) and its output."""

    code: int | None
    stdout: bytes
    stderr: bytes

    @property
    def timed_out(self) -> bool:
        """Whether the time limit ended it."""
        return self.code is None


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    cwd: Path | None = None,
    stdin: bytes | None = None,
) -> Finished:
    """Run ``argv`` with exactly ``env``; kill its process group if it outlives ``timeout`` seconds."""
    process = subprocess.Popen(
        list(argv),
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return Finished(None, b"", b"")
    return Finished(process.returncode, out, err)
