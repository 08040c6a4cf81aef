"""Running gpg and ssh-keygen: bounded, in a throwaway home, with a clean environment.

The only place in gitward that starts these tools. Each verifier owns a
private temporary directory (0700) that is its ``GNUPGHOME`` or holds its
allowed-signers file, removed on every path; no user keyring or config is
ever read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from gitward import processes
from gitward.api.conditions import Reason
from gitward.errors import Waiting

# A verification tool reads one commit and a few keys: its output and memory are small.
_MAX_OUTPUT = 4 * 1024 * 1024
_MAX_MEMORY = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool printed, and how it exited."""

    code: int
    stdout: str
    stderr: str


class ThrowawayHome:
    """A private (0700) temporary directory for one verifier's keys and files, removed on every path."""

    prefix = "gitward-trust-"

    def __init__(self) -> None:
        self.home: Path | None = None

    def __enter__(self) -> Self:
        self.home = Path(tempfile.mkdtemp(prefix=self.prefix))
        self.home.chmod(0o700)
        try:
            self.prepare(self.home)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None

    def prepare(self, home: Path) -> None:
        """Fill the new home (keys, allowed signers); the default does nothing."""

    def require_home(self) -> Path:
        """The home, or an error if used outside the ``with`` block."""
        if self.home is None:
            raise RuntimeError(f"{type(self).__name__} is used outside its context")
        return self.home


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
    """Run a verification tool; a tool that outlives ``timeout`` is killed and the check is retried."""
    done = processes.run(
        argv,
        env=env,
        timeout=timeout,
        stdin=stdin,
        cwd=cwd,
        max_output=_MAX_OUTPUT,
        limits=processes.ResourceLimits(
            address_space=_MAX_MEMORY, file_size=_MAX_OUTPUT, cpu_seconds=max(1, int(timeout))
        ),
    )
    if done.timed_out:
        # The tool, not the signature, failed: the commit is not judged, the check is retried.
        raise Waiting(Reason.RECONCILE_ERROR, f"{Path(argv[0]).name} timed out after {timeout:g}s")
    return ToolResult(
        int(done.code or 0), done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    )
