"""Running gpg and ssh-keygen: bounded, in a throwaway home, with a clean environment.

The only place in gitward that starts these tools. Each verifier owns a
private temporary directory (0700) that is its ``GNUPGHOME`` or holds its
allowed-signers file, removed on every path; no user keyring or config is
ever read.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gitward.api.conditions import Reason
from gitward.errors import Waiting


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool printed, and how it exited."""

    code: int
    stdout: str
    stderr: str


def clean_environment(home: Path) -> dict[str, str]:
    """An environment built from nothing but a PATH and a throwaway home."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "GNUPGHOME": str(home),
        "LANG": "C",
        "LC_ALL": "C",
        "TZ": "UTC",
    }


def run_tool(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    stdin: bytes | None = None,
    cwd: Path | None = None,
) -> ToolResult:
    """Run a verification tool; on timeout kill its process group and report a retryable failure."""
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
        raise Waiting(
            Reason.INVALID_SIGNATURE, f"{Path(argv[0]).name} timed out after {timeout:g}s"
        ) from None
    return ToolResult(process.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
