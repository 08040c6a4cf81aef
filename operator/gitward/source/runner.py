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
  for that head; a server that did not answer (refused or dropped the
  connection, a name that does not resolve, TLS cut short, HTTP 5xx or 429,
  a transfer cut off, our own wall-clock timeout) is ``SourceUnavailable``
  (:class:`Unavailable`, which says since when), and a server that answered
  and refused (credentials, host key, certificate, missing repository or
  branch) is ``FetchFailed``; both are retried with backoff. git's messages
  are the only signal for some causes, so they are matched here, at the
  boundary, and nowhere else.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
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
from gitward.errors import GitwardError, Stalled, Waiting, truncate
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
# What git (curl for https, OpenSSH for ssh) says when the server did not answer, as provoked in
# tests/unit/test_source_unavailable.py. A certificate that fails verification is not here: that
# server answered with an identity we cannot trust (FetchFailed, like a host key that does not match).
_UNAVAILABLE_SIGNS: Final = (
    "couldn't connect to server",  # curl 7: the connection was refused
    "failed to connect to",
    "connection refused",  # ssh: connect to host ... port ...: Connection refused
    "could not resolve host",  # curl, and ssh's "Could not resolve hostname"
    "could not resolve proxy",
    "name or service not known",
    "temporary failure in name resolution",
    "network is unreachable",
    "no route to host",
    "timed out",  # curl's connect and operation timeouts; ssh's "Connection timed out during banner exchange"
    "connection reset",  # "Connection reset by peer"; ssh's "Connection reset by <host> port <port>"
    "connection closed by",  # ssh: "kex_exchange_identification: Connection closed by remote host"
    "broken pipe",  # ssh: "ssh_dispatch_run_fatal: Connection to ...: Broken pipe"
    "empty reply from server",
    "transfer closed with",  # curl 18: "transfer closed with 970 bytes remaining to read"
    "non-properly terminated",  # GnuTLS: the TLS connection (or its handshake) was cut
    "error in the pull function",  # GnuTLS: reset during the handshake
    "error in the push function",
    "ssl_error_syscall",  # OpenSSL: the handshake was cut
    "unexpected eof while reading",  # OpenSSL 3
    "the remote end hung up unexpectedly",
    "unexpected disconnect while reading sideband packet",
    "early eof",
)
# The HTTP statuses that say "not now" rather than "no": any 5xx, and 429 Too Many Requests.
_UNAVAILABLE_STATUS: Final = re.compile(r"the requested url returned error: (5[0-9][0-9]|429)\b")
# Parts of git's messages that differ from one attempt to the next, so a status would churn.
_VARYING: Final = (
    (re.compile(r" after [0-9]+ ms(?=:)"), ""),  # curl: "Failed to connect to H port P after 0 ms: ..."
    (re.compile(r" after [0-9]+ milliseconds( with [0-9]+ (out of [0-9]+ )?bytes received)?"), ""),
    (re.compile(r"\b[0-9]+ bytes\b"), "some bytes"),  # "transfer closed with 970 bytes remaining to read"
)
# The git commands that talk to the server: only their timeouts say the server did not answer.
_REMOTE_COMMANDS: Final = frozenset({"ls-remote", "fetch"})
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


def kube_time(moment: dt.datetime | None = None) -> str:
    """A moment (now by default) as Kubernetes writes times: UTC, to the second (``2026-11-25T20:10:03Z``)."""
    return (moment or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Unavailable(Waiting):
    """The git server did not answer: ``SourceUnavailable``, retried; the message says since when.

    ``detail`` is what failed and git's words for it (scrubbed, with the parts that change from one
    attempt to the next taken out); ``since`` is when the source stopped answering, as Kubernetes
    writes times. The runner knows only this failure, so it says "since now"; a caller that tracks
    the source across attempts (:class:`~gitward.source.shared.SharedSources`) moves ``since`` back to
    the first failure of the outage with :meth:`since_then`. The message holds nothing else that
    changes between attempts, so a status that repeats it is not written again.
    """

    def __init__(self, detail: str, *, since: str, retry_after: float = 30.0) -> None:
        self.detail = detail
        self.since = since
        message = unavailable_message(detail, since)
        super().__init__(Reason.SOURCE_UNAVAILABLE, message, retry_after=retry_after)

    def since_then(self, since: str) -> Unavailable:
        """A copy of this failure that says the source has not answered since ``since``."""
        clone = self.again()
        clone.since = since
        clone.message = truncate(unavailable_message(clone.detail, since))
        clone.args = (f"{clone.reason}: {clone.message}",)
        return clone


def unavailable_message(detail: str, since: str) -> str:
    """What a ``SourceUnavailable`` condition says: since when, then what failed."""
    return f"the git server has not answered since {since}: {detail}"


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
        self.check(done, what=what, remote=bool(args) and args[0] in _REMOTE_COMMANDS)
        return done.stdout.decode(errors="replace")

    def check(self, done: processes.Finished, *, what: str, remote: bool = False) -> None:
        """Raise the error for a git command that did not succeed.

        ``remote``: the command talks to the server (``ls-remote``, ``fetch``), so running out of
        time means the server did not answer in time (``SourceUnavailable``); a local command that
        runs out of time says nothing about the server.
        """
        if done.timed_out:
            timed_out = f"{what}: timed out after {self.timeout:g}s"
            if remote:
                raise Unavailable(timed_out, since=kube_time())
            raise Waiting(Reason.FETCH_FAILED, timed_out)
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
            # Before the transport's signs: git found broken objects in what did arrive, and then
            # dropped the connection (an early EOF after that is a consequence, not the cause).
            return Stalled(
                Reason.SOURCE_REJECTED, f"{what}: git's integrity checks refused the objects: {message}"
            )
        return self._transport_failure(what, message)

    def _transport_failure(self, what: str, message: str) -> GitwardError:
        """The server refused (``FetchFailed``), or did not answer (``SourceUnavailable``)."""
        lowered = message.lower()
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
        # After the refusals: a server that refused the key or the credentials may drop the
        # connection too, and that is still a refusal.
        if any(sign in lowered for sign in _UNAVAILABLE_SIGNS) or _UNAVAILABLE_STATUS.search(lowered):
            return Unavailable(f"{what}: {steady(message)}", since=kube_time())
        return Waiting(Reason.FETCH_FAILED, f"{what}: {message}")


def steady(message: str) -> str:
    """The message of git without what changes between attempts (milliseconds, byte counts)."""
    for pattern, replacement in _VARYING:
        message = pattern.sub(replacement, message)
    return message


@contextlib.contextmanager
def throwaway_home() -> Iterator[Path]:
    """A private directory for one git operation's HOME and credentials, removed on every path."""
    with tempfile.TemporaryDirectory(prefix="gitward-git-") as home:
        Path(home).chmod(0o700)
        yield Path(home)
