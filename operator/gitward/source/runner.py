"""Running git, hardened, under the tenant's budget: the only place gitward starts git.

- Every git process gets an environment built from nothing (not a copy of
  ours): a throwaway ``HOME``, no system or global config, no terminal
  prompts, and ``GIT_ALLOW_PROTOCOL`` limited to https and ssh. That is why
  git is started here through :mod:`gitward.processes` and not through
  GitPython, whose ``Git.execute`` starts from a copy of ``os.environ`` (so
  an inherited ``GIT_ALTERNATE_OBJECT_DIRECTORIES`` or
  ``GIT_CONFIG_PARAMETERS`` would reach git); see docs/design-decisions.md.
- Config on the command line turns off hooks, fsmonitor, submodules,
  redirects and credential helpers, and makes git check every object it
  receives (``transfer.fsckObjects``).
- Credentials reach git through ``GIT_CONFIG_*`` environment variables (an
  HTTP header) or files in a throwaway 0700 directory (SSH key, pinned
  ``known_hosts``, CA bundle), never through argv or the URL, and every
  message leaving this module is scrubbed of them.
- Every call has a timeout; on expiry the whole process group (git and its
  ``git-remote-https`` or ``ssh`` children) is killed.
- The tenant's budget (:class:`~gitward.api.budgets.Budgets`) holds before
  bytes are read: git runs under OS limits (address space, the size of the
  pack it may write, CPU seconds) and keeps every fetch as one pack, so a
  fetch over budget dies in git, not in the operator; every command's
  output is capped while it is read.
- Failures are classified by cause: what git's integrity checks refuse is
  ``SourceRejected`` and over budget is ``SourceTooLarge``, both permanent
  for that head; the network, the server and credentials are
  ``FetchFailed``, retried with backoff. git's messages are the only
  signal for some causes, so they are matched here, at the boundary, and
  nowhere else.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shlex
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gitward import processes
from gitward.api.budgets import Budgets, describe
from gitward.api.conditions import Reason
from gitward.errors import GitwardError, Stalled, Waiting
from gitward.source.credentials import Credentials, scrub

_HOST_KEY_PROBLEMS: Final = (
    "host key verification failed",
    "remote host identification has changed",
    "no matching host key",
    "host key is known for",
    "host key for",
)
_OFFERED_HOST_KEY: Final = re.compile(r"key sent by the remote host is\s+(SHA256:[A-Za-z0-9+/]+)")
_AUTH_PROBLEMS: Final = (
    "terminal prompts disabled",
    "authentication failed",
    "the requested url returned error: 401",
    "the requested url returned error: 403",
    "permission denied (publickey",
)
# What git says when its integrity checks (transfer.fsckObjects, index-pack) refuse an object.
INTEGRITY_PROBLEMS: Final = (
    "fsck error",
    "error in object",
    "error in tree",
    "error in commit",
    "bad object",
    "badobject",
    "badtree",
    "badparentsha1",
    "badtreesha1",
    "baddate",
    "missingtree",
    "missingauthor",
    "missingcommitter",
    "duplicateentries",
    "treenotsorted",
    "hash mismatch",
    "corrupt",
    "malformed",
    "invalid object",
    "did not send all necessary objects",
    "pack has bad object",
    "inflate returned",
    "unable to parse",
)
# The OS limits git runs under, as git reports them from its own child (index-pack).
_FILE_SIZE_SIGNS: Final = ("signal 25", "file size limit exceeded")
_MEMORY_SIGNS: Final = ("out of memory", "cannot allocate memory", "mmap failed", "signal 24")
OUTPUT_CAP: Final = 1024 * 1024
_CONFIG: Final = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.askPass=",
    "credential.helper=",
    "protocol.allow=never",
    "protocol.https.allow=always",
    "protocol.ssh.allow=always",
    "protocol.version=2",
    "submodule.recurse=false",
    "fetch.recurseSubmodules=false",
    "transfer.fsckObjects=true",
    "fetch.fsckObjects=true",
    "http.followRedirects=false",
    "http.sslVerify=true",
    "gc.auto=0",
    "maintenance.auto=false",
    "core.logAllRefUpdates=false",
    # Every fetch is kept as one pack file, so the OS file-size limit bounds the whole fetch.
    "fetch.unpackLimit=1",
    "transfer.unpackLimit=1",
    "core.packedGitWindowSize=16m",
    "core.packedGitLimit=128m",
    "core.deltaBaseCacheLimit=16m",
)


@dataclass(frozen=True, slots=True)
class FetchOptions:
    """Operator-level settings for fetching; nothing in a resource can change them."""

    cache_root: Path
    timeout: float = 60.0
    git: str = "git"
    ssh: str = "ssh"
    # Tests serve some repositories from the local filesystem. Only test code
    # sets this; the operator builds FetchOptions without it.
    allow_file_transport: bool = False


class GitRunner:
    """Runs git for one operation, with a clean environment and credentials in a throwaway home."""

    def __init__(
        self,
        options: FetchOptions,
        credentials: Credentials | None,
        home: Path,
        *,
        budgets: Budgets | None = None,
    ) -> None:
        self.options = options
        self.budgets = budgets or Budgets()
        self.credentials = credentials or Credentials()
        self.home = home
        self.sensitive = self.credentials.sensitive_values()
        self.env = self._environment()

    def _environment(self) -> dict[str, str]:
        protocols = "https:ssh:file" if self.options.allow_file_transport else "https:ssh"
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "LANG": "C",
            "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ALLOW_PROTOCOL": protocols,
            "GIT_PROTOCOL_FROM_USER": "0",
            "GIT_NO_REPLACE_OBJECTS": "1",
            "GIT_OPTIONAL_LOCKS": "0",
            "GIT_SSH_VARIANT": "ssh",
            "GIT_SSH_COMMAND": self._ssh_command(),
        }
        config: list[tuple[str, str]] = []
        creds = self.credentials
        if creds.bearer_token:
            config.append(("http.extraHeader", f"Authorization: Bearer {creds.bearer_token}"))
        elif creds.username and creds.password:
            basic = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
            config.append(("http.extraHeader", f"Authorization: Basic {basic}"))
        if creds.ca_cert:
            ca_file = self.home / "ca.crt"
            ca_file.write_text(creds.ca_cert)
            config.append(("http.sslCAInfo", str(ca_file)))
        env["GIT_CONFIG_COUNT"] = str(len(config))
        for index, (key, value) in enumerate(config):
            env[f"GIT_CONFIG_KEY_{index}"] = key
            env[f"GIT_CONFIG_VALUE_{index}"] = value
        return env

    def _ssh_command(self) -> str:
        known_hosts = self.home / "known_hosts"
        known_hosts.write_text(self.credentials.known_hosts or "")
        argv = [
            self.options.ssh,
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "KbdInteractiveAuthentication=no",
            "-o",
            f"ConnectTimeout={max(1, int(self.options.timeout))}",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "ClearAllForwardings=yes",
            "-o",
            "PermitLocalCommand=no",
        ]
        if self.credentials.ssh_identity:
            identity = self.home / "identity"
            identity.touch(mode=0o600)
            key = self.credentials.ssh_identity
            identity.write_text(key if key.endswith("\n") else key + "\n")
            argv += ["-i", str(identity)]
        else:
            argv += ["-i", "/dev/null"]
        # git runs GIT_SSH_COMMAND through a shell; every piece is quoted, and
        # every piece is ours (temporary paths), never from the repository.
        return " ".join(shlex.quote(part) for part in argv)

    @property
    def timeout(self) -> float:
        """Wall-clock seconds for one git command: the operator's setting, capped by the tenant's budget."""
        return min(self.options.timeout, float(self.budgets.git_seconds))

    def limits(self) -> processes.ResourceLimits:
        """The OS limits of every git process (inherited by index-pack, git-remote-https and ssh)."""
        return processes.ResourceLimits(
            address_space=self.budgets.git_memory,
            file_size=self.budgets.fetch_bytes,
            cpu_seconds=self.budgets.git_seconds,
        )

    def argv(self, args: Sequence[str]) -> list[str]:
        """``git -c <hardening> ... <args>``."""
        config = list(_CONFIG)
        if self.options.allow_file_transport:
            config.append("protocol.file.allow=always")
        argv = [self.options.git]
        for item in config:
            argv += ["-c", item]
        return argv + list(args)

    def run_raw(
        self,
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        stdin: bytes | None = None,
        max_output: int | None = None,
    ) -> processes.Finished:
        """Run git under the budget's limits and return how it ended, without judging it."""
        return processes.run(
            self.argv(args),
            env=self.env,
            cwd=cwd,
            timeout=self.timeout,
            stdin=stdin,
            max_output=max_output,
            limits=self.limits(),
        )

    def run(
        self,
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        what: str,
        stdin: bytes | None = None,
        max_output: int = OUTPUT_CAP,
    ) -> str:
        """Run ``git <config> <args>``; return stdout, or raise the error that names the cause."""
        done = self.run_raw(args, cwd=cwd, stdin=stdin, max_output=max_output)
        self.check(done, what=what)
        return done.stdout.decode(errors="replace")

    def check(self, done: processes.Finished, *, what: str) -> None:
        """Raise the error for a git command that did not succeed."""
        if done.timed_out:
            raise Waiting(Reason.FETCH_FAILED, f"{what}: timed out after {self.timeout:g}s")
        if done.over_output:
            raise Stalled(Reason.SOURCE_TOO_LARGE, f"{what}: git's answer is larger than the budget allows")
        budget = self.budgets
        if done.ended is processes.Ended.FILE_SIZE_LIMIT:
            limit = describe("fetch_bytes", budget.fetch_bytes)
            raise Stalled(Reason.SOURCE_TOO_LARGE, f"{what}: the fetch is larger than the budget of {limit}")
        if done.ended is processes.Ended.CPU_LIMIT:
            raise Stalled(
                Reason.SOURCE_TOO_LARGE,
                f"{what}: git used more than {budget.git_seconds}s of CPU on this source",
            )
        if done.code != 0:
            raise self.failure(
                what, done.stderr.decode(errors="replace") or done.stdout.decode(errors="replace")
            )

    def failure(self, what: str, stderr: str) -> GitwardError:
        """Map git's complaint onto a reason and a short message that is safe to show."""
        message = scrub(" ".join(stderr.split()), self.sensitive)
        lowered = message.lower()
        if any(sign in lowered for sign in _FILE_SIZE_SIGNS):
            limit = describe("fetch_bytes", self.budgets.fetch_bytes)
            return Stalled(Reason.SOURCE_TOO_LARGE, f"{what}: the fetch is larger than the budget of {limit}")
        if any(sign in lowered for sign in _MEMORY_SIGNS):
            limit = describe("git_memory", self.budgets.git_memory)
            return Stalled(
                Reason.SOURCE_TOO_LARGE, f"{what}: git needed more than its memory budget of {limit}"
            )
        if any(problem in lowered for problem in INTEGRITY_PROBLEMS):
            return Stalled(
                Reason.SOURCE_REJECTED, f"{what}: git's integrity checks refused the objects: {message}"
            )
        if any(problem in lowered for problem in _HOST_KEY_PROBLEMS):
            offered = _OFFERED_HOST_KEY.search(message)
            detail = f" (the server offered {offered.group(1)})" if offered else ""
            return Waiting(
                Reason.FETCH_FAILED,
                f"{what}: the server's host key is not the one pinned in known_hosts{detail}",
                retry_after=300,
            )
        if any(sign in lowered for sign in _AUTH_PROBLEMS):
            return Waiting(
                Reason.FETCH_FAILED, f"{what}: authentication failed: the server refused the credentials"
            )
        return Waiting(Reason.FETCH_FAILED, f"{what}: {message}")


@contextlib.contextmanager
def throwaway_home() -> Iterator[Path]:
    """A private directory for one git operation's HOME and credentials, removed on every path."""
    with tempfile.TemporaryDirectory(prefix="gitward-git-") as home:
        Path(home).chmod(0o700)
        yield Path(home)
