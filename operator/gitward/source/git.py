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
from gitward.api.conditions import Reason
from gitward.errors import GitwardError, Stalled, Waiting
from gitward.source import urls
from gitward.source.allow import AllowedSource
from gitward.source.commits import CommitObject, parse_commit

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

    def __init__(self, options: FetchOptions, credentials: Credentials | None, home: Path) -> None:
        self.options = options
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

    def run(
        self, args: Sequence[str], *, cwd: Path | None = None, what: str, stdin: bytes | None = None
    ) -> str:
        """Run ``git <config> <args>``; return stdout, or raise ``FetchFailed`` with a scrubbed message."""
        config = list(_CONFIG)
        if self.options.allow_file_transport:
            config.append("protocol.file.allow=always")
        argv = [self.options.git]
        for item in config:
            argv += ["-c", item]
        argv += list(args)
        code, out, err = run_bounded(argv, env=self.env, cwd=cwd, timeout=self.options.timeout, stdin=stdin)
        if code is None:
            raise Waiting(Reason.FETCH_FAILED, f"{what}: timed out after {self.options.timeout:g}s")
        if code != 0:
            raise self.failure(what, err or out)
        return out

    def failure(self, what: str, stderr: str) -> GitwardError:
        """Map git's complaint onto a reason and a short message that is safe to show."""
        message = scrub(" ".join(stderr.split()), self.sensitive)
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
        return Waiting(Reason.FETCH_FAILED, f"{what}: {message}")


def run_bounded(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    timeout: float,
    stdin: bytes | None = None,
) -> tuple[int | None, str, str]:
    """Run a command bounded in time; ``None`` as the code means it was killed at the limit."""
    done = processes.run(argv, env=env, cwd=cwd, timeout=timeout, stdin=stdin)
    return done.code, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")


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
    try:
        return key_file.read_bytes()
    except FileNotFoundError:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
        return key_file.read_bytes()


def cache_dir(root: Path, *, app_uid: str, url: urls.RepoURL) -> Path:
    """The app's repository cache: stable for the app and URL, unguessable without the key."""
    digest = hmac.new(_cache_key(root), f"{app_uid}\0{url.for_git}".encode(), hashlib.sha256).hexdigest()
    return root / digest[:40]


def fetch(
    source: AllowedSource,
    *,
    app_uid: str,
    credentials: Credentials | None,
    options: FetchOptions,
) -> Checkout:
    """Bring the exact head of ``refs/heads/<branch>`` into the app's cache repository.

    Only that one ref is ever asked for: not a tag of the same name, not
    ``HEAD``, not an expression. A poll that finds the head unchanged and
    already present returns after one ``ls-remote``.
    """
    url = source.url
    if url.scheme is urls.Scheme.FILE and not options.allow_file_transport:
        raise Stalled(Reason.INVALID_URL, "file:// URLs are not allowed")
    if url.scheme is urls.Scheme.SSH and (credentials is None or not credentials.known_hosts):
        raise Stalled(
            Reason.FETCH_FAILED,
            "an SSH source needs known_hosts in its secret: the server's host key must be pinned",
        )
    repo = cache_dir(options.cache_root, app_uid=app_uid, url=url)
    with throwaway_home() as home:
        runner = GitRunner(options, credentials, home)
        if not (repo / "HEAD").exists():
            repo.mkdir(mode=0o700, parents=True, exist_ok=True)
            runner.run(["init", "--quiet", "--bare", "--template=", str(repo)], what="git init")
        remote_head = ls_remote_head(runner, url, source.ref)
        if local_head(runner, repo) == remote_head:
            return Checkout(repo=repo, url=url, branch=source.branch, commit=remote_head, fetched=False)
        runner.run(
            [
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-recurse-submodules",
                "--no-write-fetch-head",
                "--no-auto-gc",
                "--",
                url.for_git,
                f"+{source.ref}:{HEAD_REF}",
            ],
            cwd=repo,
            what=f"git fetch {url.identity} {source.ref}",
        )
        fetched = local_head(runner, repo)
    if fetched is None:
        raise Waiting(Reason.FETCH_FAILED, f"git fetch {url.identity} {source.ref}: no commit was fetched")
    return Checkout(repo=repo, url=url, branch=source.branch, commit=fetched)


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

    def __init__(self, path: Path, *, options: FetchOptions) -> None:
        self.path = path
        self.options = options
        self._cache: dict[str, CommitObject] = {}

    def _git(self, args: Sequence[str], *, stdin: bytes | None = None) -> tuple[int | None, bytes, str]:
        with throwaway_home() as home:
            env = GitRunner(self.options, None, home).env
            argv = [self.options.git]
            for item in _CONFIG:
                argv += ["-c", item]
            done = processes.run(
                [*argv, *args], env=env, cwd=self.path, timeout=self.options.timeout, stdin=stdin
            )
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
        if code != 0:
            raise Waiting(Reason.FETCH_FAILED, f"git rev-list failed: {err.strip()[:300]}")
        return [line for line in out.decode().split() if SHA_RE.match(line)]

    def load(self, shas: Sequence[str]) -> None:
        """Read many commit objects in one ``git cat-file --batch``."""
        wanted = [sha for sha in dict.fromkeys(shas) if sha not in self._cache]
        if not wanted:
            return
        for sha, (kind, body) in self._batch(wanted).items():
            if kind != "commit":
                raise Stalled(Reason.FETCH_FAILED, f"{sha} is not a commit in the fetched repository")
            self._cache[sha] = parse_commit(sha, body)

    def commit(self, sha: str) -> CommitObject:
        """The parsed commit object."""
        self.load([sha])
        return self._cache[sha]

    def tree(self, commit: str) -> list[TreeEntry]:
        """Every entry of the commit's tree (recursively), with mode and size, without a checkout."""
        code, out, err = self._git(["ls-tree", "-r", "-l", "-z", "--full-tree", commit])
        if code != 0:
            raise Waiting(Reason.FETCH_FAILED, f"git ls-tree failed: {err.strip()[:300]}")
        entries = []
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
        return entries

    def blobs(self, oids: Sequence[str]) -> dict[str, bytes]:
        """Read blobs in one ``git cat-file --batch``."""
        return {oid: body for oid, (_, body) in self._batch(list(dict.fromkeys(oids))).items()}

    def _batch(self, oids: Sequence[str]) -> dict[str, tuple[str, bytes]]:
        """Objects by id, with their type, from one ``git cat-file --batch``."""
        if not oids:
            return {}
        code, out, err = self._git(
            ["cat-file", "--batch"], stdin="".join(f"{oid}\n" for oid in oids).encode()
        )
        if code != 0:
            raise Waiting(Reason.FETCH_FAILED, f"git cat-file failed: {err.strip()[:300]}")
        found: dict[str, tuple[str, bytes]] = {}
        position = 0
        for oid in oids:
            header_end = out.index(b"\n", position)
            fields = out[position:header_end].split()
            if len(fields) != 3:  # noqa: PLR2004 - "<oid> <type> <size>"; "<oid> missing" otherwise
                raise Stalled(Reason.FETCH_FAILED, f"object {oid} is missing from the fetched repository")
            size = int(fields[2])
            found[oid] = (fields[1].decode(), out[header_end + 1 : header_end + 1 + size])
            position = header_end + 1 + size + 1
        return found
