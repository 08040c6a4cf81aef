"""Running a program under limits that really hold: time, output, memory, file size and CPU.

``subprocess.run(timeout=...)`` kills only the direct child; git's
``git-remote-https`` or ``ssh``, or a tool's helpers, keep the pipes open
and the call hangs anyway. Here every program starts in its own process
group, and on timeout the whole group is killed.

Untrusted input decides how much a program prints and allocates (a tree
that fans out into millions of paths, a commit message of hundreds of
megabytes), so the output is read incrementally and the group is killed as
soon as it passes ``max_output``, before the bytes pile up in the
operator; and the program runs under OS resource limits (address space,
size of any file it writes, CPU seconds) set by ``prlimit`` before it
execs, so a child that goes wild dies alone and :class:`Finished` says
which limit ended it. ``prlimit`` rather than ``preexec_fn``, because the
operator is multi-threaded and ``preexec_fn`` is not safe there.

Used by the only modules that start programs: ``source`` (git),
``trust.tools`` (gpg, ssh-keygen) and ``render.kustomize`` (kustomize).
"""

from __future__ import annotations

import contextlib
import enum
import os
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

_CHUNK: Final = 64 * 1024
_PRLIMIT: Final = shutil.which("prlimit") or "/usr/bin/prlimit"


@dataclass(frozen=True, slots=True)
class ResourceLimits:
    """OS limits for one program and everything it starts (they are inherited across exec and fork)."""

    address_space: int | None = None  # bytes of virtual memory (RLIMIT_AS)
    file_size: int | None = None  # bytes, the largest file it may write (RLIMIT_FSIZE)
    cpu_seconds: int | None = None  # CPU time (RLIMIT_CPU); SIGXCPU, then SIGKILL
    open_files: int | None = 1024  # RLIMIT_NOFILE

    def prefix(self) -> list[str]:
        """``prlimit`` options that set these limits, soft and hard alike."""
        options = []
        for flag, value in (
            ("--as", self.address_space),
            ("--fsize", self.file_size),
            ("--nofile", self.open_files),
        ):
            if value is not None:
                options.append(f"{flag}={value}:{value}")
        if self.cpu_seconds is not None:
            # SIGXCPU at the soft limit says why; SIGKILL a second later if it is ignored.
            options.append(f"--cpu={self.cpu_seconds}:{self.cpu_seconds + 1}")
        return [_PRLIMIT, *options, "--"] if options else []


class Ended(enum.StrEnum):
    """Why a program stopped."""

    EXITED = "exited"
    TIMED_OUT = "timed-out"  # the wall-clock limit; the process group was killed
    OUTPUT_LIMIT = "output-limit"  # it printed more than max_output; the process group was killed
    FILE_SIZE_LIMIT = "file-size-limit"  # SIGXFSZ: it tried to write a file over its limit
    CPU_LIMIT = "cpu-limit"  # SIGXCPU or SIGKILL after the CPU limit
    SIGNALED = "signaled"  # another signal


@dataclass(frozen=True, slots=True)
class Finished:
    """How a program ended: its exit code (None if gitward killed it) and its output."""

    code: int | None
    stdout: bytes
    stderr: bytes
    ended: Ended = Ended.EXITED

    @property
    def timed_out(self) -> bool:
        """Whether the time limit ended it."""
        return self.ended is Ended.TIMED_OUT

    @property
    def over_output(self) -> bool:
        """Whether it printed more than it was allowed to."""
        return self.ended is Ended.OUTPUT_LIMIT


def _ended_by(code: int) -> Ended:
    if code >= 0:
        return Ended.EXITED
    signum = -code
    if signum == signal.SIGXFSZ:
        return Ended.FILE_SIZE_LIMIT
    if signum == signal.SIGXCPU:
        return Ended.CPU_LIMIT
    return Ended.SIGNALED


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    cwd: Path | None = None,
    stdin: bytes | None = None,
    max_output: int | None = None,
    limits: ResourceLimits | None = None,
) -> Finished:
    """Run ``argv`` with exactly ``env``, bounded in time, output and (with ``limits``) resources."""
    command = [*(limits.prefix() if limits else []), *argv]
    process = subprocess.Popen(
        command,
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        return _collect(process, stdin=stdin, timeout=timeout, max_output=max_output)
    finally:
        _kill_group(process)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if process.returncode is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


def _collect(
    process: subprocess.Popen[bytes], *, stdin: bytes | None, timeout: float, max_output: int | None
) -> Finished:
    """Pump stdin and read stdout/stderr without blocking, until exit or a limit."""
    assert process.stdout is not None  # noqa: S101 - a pipe
    assert process.stderr is not None  # noqa: S101 - a pipe
    deadline = time.monotonic() + timeout
    stderr_cap = 256 * 1024  # a tool's complaint, never its payload
    out = bytearray()
    err = bytearray()
    pending = memoryview(stdin or b"")
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ, "out")
        selector.register(process.stderr, selectors.EVENT_READ, "err")
        if process.stdin is not None:
            if pending:
                os.set_blocking(process.stdin.fileno(), False)
                selector.register(process.stdin, selectors.EVENT_WRITE, "in")
            else:
                process.stdin.close()
        open_readers = 2
        while open_readers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _kill_group(process)
                return Finished(None, bytes(out), bytes(err), Ended.TIMED_OUT)
            for key, _ in selector.select(timeout=min(remaining, 1.0)):
                if key.data == "in":
                    pending = _write_some(selector, key, pending, process.stdin)
                    continue
                chunk = os.read(key.fd, _CHUNK)
                if not chunk:
                    selector.unregister(key.fileobj)
                    open_readers -= 1
                    continue
                if key.data == "out":
                    out += chunk
                    if max_output is not None and len(out) > max_output:
                        _kill_group(process)
                        return Finished(None, bytes(out[:max_output]), bytes(err), Ended.OUTPUT_LIMIT)
                elif len(err) < stderr_cap:
                    err += chunk[: stderr_cap - len(err)]
    try:
        code = process.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill_group(process)
        return Finished(None, bytes(out), bytes(err), Ended.TIMED_OUT)
    return Finished(code, bytes(out), bytes(err), _ended_by(code))


def _write_some(
    selector: selectors.BaseSelector,
    key: selectors.SelectorKey,
    pending: memoryview,
    stream: IO[bytes] | None,
) -> memoryview:
    """Feed the program's stdin without blocking; close it once everything is written."""
    try:
        written = os.write(key.fd, pending[:_CHUNK])
    except BrokenPipeError:  # it stopped reading: the rest does not matter
        written = len(pending)
    except BlockingIOError:
        return pending
    pending = pending[written:]
    if not pending:
        selector.unregister(key.fileobj)
        if stream is not None:
            stream.close()  # through its file object, so the descriptor is closed exactly once
    return pending


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    # Only while the leader is not reaped: after that its pid (and so the group id) may be reused.
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
