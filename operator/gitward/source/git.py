"""The only module in gitward that runs git.

Hardening, in one place:

- Every git process gets an environment built from nothing (not a copy of
  ours): a throwaway ``HOME``, no system or global config, no terminal
  prompts, and ``GIT_ALLOW_PROTOCOL`` limited to https and ssh. That is why
  git is started here with :mod:`subprocess` and not through gitpython:
  gitpython's ``Git.execute`` always copies ``os.environ`` into the child
  (so an inherited ``GIT_ALTERNATE_OBJECT_DIRECTORIES`` or
  ``GIT_CONFIG_PARAMETERS`` would reach git), and its process-free object
  database is deprecated upstream for security reasons. Commit objects are
  read in one ``git cat-file --batch`` per verification.
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
  fetch over budget dies in git, not in the operator; object sizes come
  from ``cat-file --batch-check`` and ``ls-tree -l`` before any content is
  read; and every command's output is capped while it is read, so a tree
  that fans out into millions of paths is refused after a few megabytes.
- Failures are classified by cause: what git's integrity checks refuse
  (``transfer.fsckObjects``) is ``SourceRejected`` and over budget is
  ``SourceTooLarge``, both permanent for that head; the network, the server
  and credentials are ``FetchFailed``, retried with backoff.
- One bare repository per app and URL, in a 0700 cache directory whose name
  is an HMAC of both under a key kept in the cache root, so it cannot be
  guessed; it is reused across reconciles, and a poll that finds the branch
  unchanged costs one ``ls-remote`` round trip, not a clone.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import shlex
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from gitward import processes
from gitward.api.budgets import Budgets, describe
from gitward.api.conditions import Reason
from gitward.errors import GitwardError, Stalled, Waiting
from gitward.source import urls
from gitward.source.allow import AllowedSource
from gitward.source.commits import CommitObject, parse_commit

_KEY_BYTES: Final = 32
SHA_RE: Final = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
HEAD_REF: Final = "refs/gitward/head"
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
_INTEGRITY_PROBLEMS: Final = (
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
_LS_REMOTE_OUTPUT: Final = 1024 * 1024
_ENTRY_OVERHEAD: Final = 128  # mode, type, id and size of one ls-tree line, besides the path
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


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """How to authenticate to the git server, from the app's ``secretRef`` Secret.

    Keys (as in Flux): ``username`` + ``password`` (HTTPS basic auth),
    ``bearerToken`` (HTTPS), ``identity`` + ``known_hosts`` (SSH), and
    optionally ``ca.crt`` (a CA bundle for HTTPS). ``repr`` never shows values.
    """

    username: str | None = None
    password: str | None = None
    bearer_token: str | None = None
    ssh_identity: str | None = None
    known_hosts: str | None = None
    ca_cert: str | None = None

    @classmethod
    def from_secret_data(cls, data: Mapping[str, bytes]) -> Credentials:
        """Build from a Secret's decoded ``data``."""

        def text(key: str) -> str | None:
            value = data.get(key)
            return value.decode() if value else None

        return cls(
            username=text("username"),
            password=text("password"),
            bearer_token=text("bearerToken"),
            ssh_identity=text("identity"),
            known_hosts=text("known_hosts"),
            ca_cert=text("ca.crt"),
        )

    def sensitive_values(self) -> list[str]:
        """Every string that must never appear in a message, including encoded forms."""
        values = [v for v in (self.password, self.bearer_token, self.ssh_identity) if v]
        if self.username and self.password:
            values.append(base64.b64encode(f"{self.username}:{self.password}".encode()).decode())
        return values

    def __repr__(self) -> str:
        present = [
            name for name in ("username", "password", "bearer_token", "ssh_identity") if getattr(self, name)
        ]
        return f"Credentials({', '.join(present) or 'none'})"


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


@dataclass(frozen=True, slots=True)
class Checkout:
    """A branch head fetched into the app's cache repository."""

    repo: Path
    url: urls.RepoURL
    branch: str
    commit: str
    fetched: bool = field(default=True)


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One entry of a commit's tree: a file (100644/100755), a symlink (120000) or a submodule (160000)."""

    path: str
    mode: str
    kind: str
    oid: str
    size: int

    @property
    def is_symlink(self) -> bool:
        """A symbolic link: its blob is the target path."""
        return self.mode == "120000"

    @property
    def is_file(self) -> bool:
        """A regular file."""
        return self.kind == "blob" and not self.is_symlink


def scrub(text: str, sensitive: Sequence[str]) -> str:
    """Replace every sensitive value (and each line of a multi-line one) with ``***``."""
    for value in sorted(sensitive, key=len, reverse=True):
        for piece in [value, *[line for line in value.splitlines() if len(line) >= 8]]:  # noqa: PLR2004
            text = text.replace(piece, "***")
    return text


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
        max_output: int = _LS_REMOTE_OUTPUT,
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
        if any(problem in lowered for problem in _INTEGRITY_PROBLEMS):
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


def _cache_key(root: Path) -> bytes:
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    root.chmod(0o700)
    key_file = root / ".key"
    key = key_file.read_bytes() if key_file.exists() else b""
    if len(key) == _KEY_BYTES:
        return key
    # Written once under a temporary name and linked into place: two apps starting together
    # both end up with the one key that won, never a half-written one or a FileExistsError.
    candidate = root / f".key-{secrets.token_hex(8)}"
    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(secrets.token_bytes(_KEY_BYTES))
    with contextlib.suppress(FileExistsError):
        os.link(candidate, key_file)
    candidate.unlink()
    return key_file.read_bytes()


def cache_dir(root: Path, *, app_uid: str, url: urls.RepoURL) -> Path:
    """The app's repository cache: stable for the app and URL, unguessable without the key."""
    digest = hmac.new(_cache_key(root), f"{app_uid}\0{url.for_git}".encode(), hashlib.sha256).hexdigest()
    return root / digest[:40]


def _check_transport(source: AllowedSource, credentials: Credentials | None, options: FetchOptions) -> None:
    url = source.url
    if url.scheme is urls.Scheme.FILE and not options.allow_file_transport:
        raise Stalled(Reason.INVALID_URL, "file:// URLs are not allowed")
    if url.scheme is urls.Scheme.SSH and (credentials is None or not credentials.known_hosts):
        raise Stalled(
            Reason.FETCH_FAILED,
            "an SSH source needs known_hosts in its secret: the server's host key must be pinned",
        )


def remote_head(
    source: AllowedSource,
    *,
    credentials: Credentials | None,
    options: FetchOptions,
    budgets: Budgets | None = None,
) -> str:
    """The commit ``refs/heads/<branch>`` points at on the server: one ``ls-remote``, nothing fetched.

    Deciding on the head before fetching means a head that was refused (over
    budget, broken objects) is never downloaded again until the branch moves.
    """
    _check_transport(source, credentials, options)
    with throwaway_home() as home:
        return ls_remote_head(GitRunner(options, credentials, home, budgets=budgets), source.url, source.ref)


def fetch(
    source: AllowedSource,
    *,
    app_uid: str,
    credentials: Credentials | None,
    options: FetchOptions,
    budgets: Budgets | None = None,
    head: str | None = None,
) -> Checkout:
    """Bring the exact head of ``refs/heads/<branch>`` into the app's cache repository.

    Only that one ref is ever asked for: not a tag of the same name, not
    ``HEAD``, not an expression. A poll that finds the head unchanged and
    already present returns after one ``ls-remote`` (none, when the caller
    passes the ``head`` it just saw with :func:`remote_head`).
    """
    _check_transport(source, credentials, options)
    url = source.url
    repo = cache_dir(options.cache_root, app_uid=app_uid, url=url)
    with throwaway_home() as home:
        runner = GitRunner(options, credentials, home, budgets=budgets)
        if not (repo / "HEAD").exists():
            repo.mkdir(mode=0o700, parents=True, exist_ok=True)
            runner.run(["init", "--quiet", "--bare", "--template=", str(repo)], what="git init")
        wanted = head or ls_remote_head(runner, url, source.ref)
        if local_head(runner, repo) == wanted:
            return Checkout(repo=repo, url=url, branch=source.branch, commit=wanted, fetched=False)
        try:
            _fetch_head(runner, repo, source, url)
        except GitwardError as error:
            error.commit = wanted  # a refusal is about this head: not retried until it moves
            raise
        fetched = local_head(runner, repo)
    if fetched is None:
        raise Waiting(Reason.FETCH_FAILED, f"git fetch {url.identity} {source.ref}: no commit was fetched")
    return Checkout(repo=repo, url=url, branch=source.branch, commit=fetched)


def _fetch_head(runner: GitRunner, repo: Path, source: AllowedSource, url: urls.RepoURL) -> None:
    what = f"git fetch {url.identity} {source.ref}"
    args = [
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-recurse-submodules",
        "--no-write-fetch-head",
        "--no-auto-gc",
    ]
    try:
        runner.run([*args, "--", url.for_git, f"+{source.ref}:{HEAD_REF}"], cwd=repo, what=what)
    except GitwardError:
        if _discard_partial_packs(repo) >= runner.budgets.fetch_bytes:
            # index-pack was stopped by the file-size limit (git then only says its output was
            # invalid): the pack it was writing reached the budget.
            limit = describe("fetch_bytes", runner.budgets.fetch_bytes)
            raise Stalled(
                Reason.SOURCE_TOO_LARGE, f"{what}: the fetch is larger than the budget of {limit}"
            ) from None
        raise


def _discard_partial_packs(repo: Path) -> int:
    """Remove what a failed fetch left behind in the cache; return the size of the largest piece."""
    largest = 0
    for partial in (repo / "objects" / "pack").glob("tmp_*"):
        with contextlib.suppress(OSError):
            largest = max(largest, partial.stat().st_size)
            partial.unlink()
    return largest


def ls_remote_head(runner: GitRunner, url: urls.RepoURL, ref: str) -> str:
    """The commit the server's ``ref`` points at; exactly that ref, nothing that merely ends like it."""
    out = runner.run(["ls-remote", "--heads", "--", url.for_git, ref], what=f"git ls-remote {url.identity}")
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        if name == ref and SHA_RE.match(sha):
            return sha
    raise Waiting(
        Reason.FETCH_FAILED, f"branch {ref.removeprefix('refs/heads/')!r} not found in {url.identity}"
    )


def local_head(runner: GitRunner, repo: Path) -> str | None:
    """The commit last fetched into ``repo``, if any."""
    try:
        out = runner.run(
            ["rev-parse", "--verify", "--quiet", f"{HEAD_REF}^{{commit}}"], cwd=repo, what="rev-parse"
        )
    except GitwardError:
        return None
    sha = out.strip()
    return sha if SHA_RE.match(sha) else None


class Repository:
    """Read-only questions about a fetched cache repository (ancestry, commit ranges, objects)."""

    def __init__(self, path: Path, *, options: FetchOptions, budgets: Budgets | None = None) -> None:
        self.path = path
        self.options = options
        self.budgets = budgets or Budgets()
        self._cache: dict[str, CommitObject] = {}

    def _run(
        self, args: Sequence[str], *, stdin: bytes | None = None, max_output: int = _LS_REMOTE_OUTPUT
    ) -> processes.Finished:
        with throwaway_home() as home:
            runner = GitRunner(self.options, None, home, budgets=self.budgets)
            return runner.run_raw(args, cwd=self.path, stdin=stdin, max_output=max_output)

    def _git(self, args: Sequence[str], *, stdin: bytes | None = None) -> tuple[int | None, bytes, str]:
        done = self._run(args, stdin=stdin)
        if done.ended is not processes.Ended.EXITED:
            with throwaway_home() as home:
                GitRunner(self.options, None, home, budgets=self.budgets).check(done, what=f"git {args[0]}")
        return done.code, done.stdout, done.stderr.decode(errors="replace")

    def has_commit(self, sha: str) -> bool:
        """Whether ``sha`` names a commit present in this repository."""
        if not SHA_RE.match(sha):
            return False
        code, _, _ = self._git(["cat-file", "-e", f"{sha}^{{commit}}"])
        return code == 0

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """Whether ``descendant`` descends from ``ancestor`` (a commit is its own ancestor)."""
        if not (self.has_commit(ancestor) and self.has_commit(descendant)):
            return False
        code, _, err = self._git(["merge-base", "--is-ancestor", ancestor, descendant])
        if code in (0, 1):
            return code == 0
        raise Waiting(Reason.FETCH_FAILED, f"git merge-base failed: {err.strip()[:300]}")

    def commits_between(self, since: str | None, head: str, *, limit: int) -> list[str]:
        """Commits reachable from ``head`` but not from ``since``, merges and second parents included."""
        spec = [head] if since is None else [head, f"^{since}"]
        code, out, err = self._git(["rev-list", f"--max-count={limit + 1}", *spec, "--"])
        if code is not None and code != 0 and "bad object" in err.lower():
            raise Stalled(Reason.SOURCE_REJECTED, f"git rev-list: the history is broken: {err.strip()[:300]}")
        if code != 0:
            raise Waiting(Reason.FETCH_FAILED, f"git rev-list failed: {err.strip()[:300]}")
        return [line for line in out.decode().split() if SHA_RE.match(line)]

    def load(self, shas: Sequence[str]) -> None:
        """Read many commit objects in one ``git cat-file --batch``, after checking their sizes."""
        wanted = [sha for sha in dict.fromkeys(shas) if sha not in self._cache]
        if not wanted:
            return
        sizes = self.sizes(wanted)
        for sha, (kind, size) in sizes.items():
            if kind != "commit":
                raise Stalled(Reason.SOURCE_REJECTED, f"{sha} is a {kind}, not a commit")
            self._check_object_size(f"commit {sha[:12]}", size)
        for sha, (kind, body) in self._batch(wanted, expected=sum(s for _, s in sizes.values())).items():
            if kind != "commit":
                raise Stalled(Reason.SOURCE_REJECTED, f"{sha} is not a commit in the fetched repository")
            self._cache[sha] = parse_commit(sha, body)

    def _check_object_size(self, what: str, size: int) -> None:
        if size > self.budgets.object_bytes:
            limit = describe("object_bytes", self.budgets.object_bytes)
            raise Stalled(
                Reason.SOURCE_TOO_LARGE, f"{what} is {size} bytes; the budget for one object is {limit}"
            )

    def sizes(self, oids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """Type and size of each object, from git's metadata alone (``cat-file --batch-check``)."""
        if not oids:
            return {}
        done = self._run(
            ["cat-file", "--batch-check"],
            stdin="".join(f"{oid}\n" for oid in oids).encode(),
            max_output=len(oids) * _ENTRY_OVERHEAD,
        )
        if done.code != 0:
            raise Waiting(Reason.FETCH_FAILED, f"git cat-file --batch-check failed: {done.stderr[:300]!r}")
        found: dict[str, tuple[str, int]] = {}
        for oid, line in zip(oids, done.stdout.decode(errors="replace").splitlines(), strict=False):
            fields = line.split()
            if len(fields) != 3 or not fields[2].isdigit():  # noqa: PLR2004 - "<oid> <type> <size>"
                raise Stalled(Reason.SOURCE_REJECTED, f"object {oid} is missing from the fetched repository")
            found[oid] = (fields[1], int(fields[2]))
        if len(found) != len(oids):
            raise Stalled(Reason.SOURCE_REJECTED, "objects are missing from the fetched repository")
        return found

    def commit(self, sha: str) -> CommitObject:
        """The parsed commit object."""
        self.load([sha])
        return self._cache[sha]

    def tree(self, commit: str) -> list[TreeEntry]:
        """Every entry of the commit's tree (recursively), with mode and size, without a checkout.

        A tree can name one subtree many times, so a few kilobytes of objects
        can describe billions of paths: git's answer is capped while it is
        read, and the entries and their total size are checked against the
        budget before any file is read.
        """
        budget = self.budgets
        entries_limit = describe("tree_entries", budget.tree_entries)
        done = self._run(
            ["ls-tree", "-r", "-l", "-z", "--full-tree", commit],
            max_output=budget.tree_entries * (_ENTRY_OVERHEAD + 256),
        )
        if done.over_output:
            raise Stalled(
                Reason.SOURCE_TOO_LARGE,
                f"the tree of {commit[:12]} has more entries (or longer paths) than the budget of "
                f"{entries_limit} entries allows",
            )
        if done.code != 0:
            err = done.stderr.decode(errors="replace")
            if any(problem in err.lower() for problem in _INTEGRITY_PROBLEMS):
                raise Stalled(Reason.SOURCE_REJECTED, f"git ls-tree: the tree is broken: {err.strip()[:300]}")
            raise Waiting(Reason.FETCH_FAILED, f"git ls-tree failed: {err.strip()[:300]}")
        out = done.stdout
        entries = []
        total = 0
        for record in out.split(b"\0"):
            if not record:
                continue
            meta, _, path = record.partition(b"\t")
            mode, kind, oid, size = meta.split()
            entries.append(
                TreeEntry(
                    path=path.decode(errors="surrogateescape"),
                    mode=mode.decode(),
                    kind=kind.decode(),
                    oid=oid.decode(),
                    size=int(size) if size != b"-" else 0,
                )
            )
            total += entries[-1].size
        if len(entries) > budget.tree_entries:
            raise Stalled(
                Reason.SOURCE_TOO_LARGE,
                f"the tree of {commit[:12]} has {len(entries)} entries; the budget is {entries_limit}",
            )
        if total > budget.tree_bytes:
            raise Stalled(
                Reason.SOURCE_TOO_LARGE,
                f"the files of {commit[:12]} add up to {total} bytes; the budget is "
                f"{describe('tree_bytes', budget.tree_bytes)}",
            )
        return entries

    def blobs(self, oids: Sequence[str]) -> dict[str, bytes]:
        """Read blobs in one ``git cat-file --batch``, after checking their sizes."""
        wanted = list(dict.fromkeys(oids))
        sizes = self.sizes(wanted)
        for oid, (_, size) in sizes.items():
            self._check_object_size(f"blob {oid[:12]}", size)
        expected = sum(size for _, size in sizes.values())
        return {oid: body for oid, (_, body) in self._batch(wanted, expected=expected).items()}

    def _batch(self, oids: Sequence[str], *, expected: int) -> dict[str, tuple[str, bytes]]:
        """Objects by id, with their type, from one ``git cat-file --batch`` of ``expected`` content bytes."""
        if not oids:
            return {}
        done = self._run(
            ["cat-file", "--batch"],
            stdin="".join(f"{oid}\n" for oid in oids).encode(),
            max_output=expected + len(oids) * _ENTRY_OVERHEAD,
        )
        if done.over_output:
            raise Stalled(Reason.SOURCE_REJECTED, "git returned more bytes than the objects' sizes announced")
        code, out, err = done.code, done.stdout, done.stderr.decode(errors="replace")
        if code != 0:
            raise Waiting(Reason.FETCH_FAILED, f"git cat-file failed: {err.strip()[:300]}")
        found: dict[str, tuple[str, bytes]] = {}
        position = 0
        for oid in oids:
            header_end = out.index(b"\n", position)
            fields = out[position:header_end].split()
            if len(fields) != 3:  # noqa: PLR2004 - "<oid> <type> <size>"; "<oid> missing" otherwise
                raise Stalled(Reason.SOURCE_REJECTED, f"object {oid} is missing from the fetched repository")
            size = int(fields[2])
            found[oid] = (fields[1].decode(), out[header_end + 1 : header_end + 1 + size])
            position = header_end + 1 + size + 1
        return found
