"""Real signing identities and real repositories for tests.

Keys are made with the real ``gpg`` and ``ssh-keygen`` in throwaway homes;
commits are made and signed by the real ``git``. Nothing here touches the
user's keyring or git config.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from gitward.trust.keys import ssh_fingerprint

ENV_BASE = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "LANG": "C",
    "LC_ALL": "C",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Dev One",
    "GIT_AUTHOR_EMAIL": "dev@example.com",
    "GIT_COMMITTER_NAME": "Dev One",
    "GIT_COMMITTER_EMAIL": "dev@example.com",
}


def run(argv: list[str], *, env: dict[str, str], cwd: Path | None = None, stdin: bytes | None = None) -> str:
    result = subprocess.run(
        argv, env=env, cwd=cwd, input=stdin, capture_output=True, check=False, timeout=120
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{argv[0]} {' '.join(argv[1:4])} failed: {result.stderr.decode(errors='replace')}"
        )
    return result.stdout.decode(errors="replace")


@dataclass
class SshIdentity:
    """An SSH key pair usable for signing commits and for logging in to a test sshd."""

    private_key: Path
    principal: str = "dev@example.com"

    @classmethod
    def create(cls, directory: Path, name: str = "id", principal: str = "dev@example.com") -> SshIdentity:
        directory.mkdir(parents=True, exist_ok=True)
        key = directory / name
        run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", str(key)],
            env=dict(ENV_BASE),
        )
        return cls(key, principal)

    @property
    def public_line(self) -> str:
        return Path(f"{self.private_key}.pub").read_text().strip()

    @property
    def fingerprint(self) -> str:
        return ssh_fingerprint(self.public_line.split()[1])

    def allowed_signers_line(self, options: str = "") -> str:
        key_type, blob = self.public_line.split()[:2]
        return f"{self.principal} {options + ' ' if options else ''}{key_type} {blob}"


_GPG_HOMES: list[Path] = []


def stop_gpg_agents() -> None:
    """Stop the gpg-agent each identity's GNUPGHOME started (gpg starts one per home, and it outlives gpg)."""
    while _GPG_HOMES:
        home = _GPG_HOMES.pop()
        subprocess.run(
            ["gpgconf", "--homedir", str(home), "--kill", "all"],
            env={**ENV_BASE, "GNUPGHOME": str(home)},
            capture_output=True,
            check=False,
            timeout=30,
        )


@dataclass
class GpgIdentity:
    """An OpenPGP key in its own throwaway GNUPGHOME."""

    home: Path
    fingerprint: str
    uid: str
    signing_key: str = ""  # what git is told to sign with (primary or a subkey)
    faked_time: str | None = None

    @classmethod
    def create(
        cls,
        home: Path,
        uid: str = "Dev One <dev@example.com>",
        *,
        expire: str = "never",
        faked_time: str | None = None,
        signing_subkey: bool = False,
    ) -> GpgIdentity:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        _GPG_HOMES.append(home)
        identity = cls(home=home, fingerprint="", uid=uid, faked_time=faked_time)
        usage = "cert" if signing_subkey else "sign,cert"
        identity.gpg("--quick-generate-key", uid, "ed25519", usage, expire)
        identity.fingerprint = identity.primary_fingerprints()[0]
        identity.signing_key = identity.fingerprint
        if signing_subkey:
            identity.gpg("--quick-add-key", identity.fingerprint, "ed25519", "sign", expire)
            identity.signing_key = identity.subkey_fingerprints()[0] + "!"
        return identity

    def env(self) -> dict[str, str]:
        return {**ENV_BASE, "GNUPGHOME": str(self.home), "HOME": str(self.home)}

    def gpg(self, *args: str, stdin: bytes | None = None) -> str:
        faked = ["--faked-system-time", self.faked_time] if self.faked_time else []
        return run(
            ["gpg", "--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", "", *faked, *args],
            env=self.env(),
            stdin=stdin,
        )

    def _fingerprints(self, record: str) -> list[str]:
        out = self.gpg("--with-colons", "--fixed-list-mode", "--list-keys")
        found, take = [], False
        for line in out.splitlines():
            fields = line.split(":")
            if fields[0] in {"pub", "sub"}:
                take = fields[0] == record
            elif fields[0] == "fpr" and take:
                found.append(fields[9])
                take = False
        return found

    def primary_fingerprints(self) -> list[str]:
        return self._fingerprints("pub")

    def subkey_fingerprints(self) -> list[str]:
        return self._fingerprints("sub")

    def public_armor(self) -> str:
        return self.gpg("--armor", "--export", self.fingerprint)

    def revoke(self) -> None:
        """Revoke the key with the revocation certificate gpg made when creating it."""
        certificate = self.home / "openpgp-revocs.d" / f"{self.fingerprint}.rev"
        text = certificate.read_text().replace(
            ":-----BEGIN PGP PUBLIC KEY BLOCK-----", "-----BEGIN PGP PUBLIC KEY BLOCK-----"
        )
        self.gpg("--import", stdin=text.encode())

    def gpg_program(self) -> Path:
        """A gpg wrapper for git that signs at this identity's faked time, if any."""
        wrapper = self.home / "gpg-for-git"
        faked = f" --faked-system-time {self.faked_time}" if self.faked_time else ""
        wrapper.write_text(
            f'#!/bin/sh\nexec gpg --batch --pinentry-mode loopback --passphrase ""{faked} "$@"\n'
        )
        wrapper.chmod(0o755)
        return wrapper


@dataclass
class WorkRepo:
    """A working repository that makes (signed) commits and pushes them to bare remotes."""

    path: Path
    home: Path
    remotes: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def create(cls, path: Path, branch: str = "main") -> WorkRepo:
        home = path.parent / f"{path.name}-home"
        home.mkdir(parents=True, exist_ok=True)
        repo = cls(path, home)
        path.mkdir(parents=True, exist_ok=True)
        repo.git("init", "-q", "-b", branch)
        return repo

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**ENV_BASE, "HOME": str(self.home), "GIT_CONFIG_GLOBAL": "/dev/null", **(extra or {})}

    def git(self, *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> str:
        return run(["git", *args], env=env or self.env(), cwd=self.path, stdin=stdin)

    def commit(
        self,
        files: dict[str, str] | None = None,
        *,
        message: str = "change",
        sign: SshIdentity | GpgIdentity | None = None,
    ) -> str:
        for name, content in (files or {f"file-{uuid.uuid4().hex[:8]}.txt": message}).items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            self.git("add", name)
        self._commit(["commit", "-q", "--allow-empty", "-m", message], sign)
        return self.head()

    def revert(self, *, sign: SshIdentity | GpgIdentity | None = None) -> str:
        self._commit(["revert", "--no-edit", "HEAD"], sign)
        return self.head()

    def merge(self, branch: str, *, sign: SshIdentity | GpgIdentity | None = None) -> str:
        self._commit(["merge", "-q", "--no-ff", "-m", f"merge {branch}", branch], sign)
        return self.head()

    def _commit(self, args: list[str], sign: SshIdentity | GpgIdentity | None) -> None:
        if sign is None:
            self.git("-c", "commit.gpgSign=false", *args)
        elif isinstance(sign, SshIdentity):
            self.git(
                "-c", "gpg.format=ssh", "-c", f"user.signingKey={sign.private_key}", "-c", "commit.gpgSign=true",
                *args,
            )  # fmt: skip
        else:
            self.git(
                "-c", "gpg.format=openpgp", "-c", f"gpg.program={sign.gpg_program()}",
                "-c", f"user.signingKey={sign.signing_key}", "-c", "commit.gpgSign=true",
                *args,
                env=self.env({"GNUPGHOME": str(sign.home)}),
            )  # fmt: skip

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()

    def log(self) -> list[str]:
        try:
            return self.git("rev-list", "HEAD").split()
        except AssertionError:
            return []

    def raw_commit(self, sha: str) -> bytes:
        return subprocess.run(
            ["git", "cat-file", "commit", sha], env=self.env(), cwd=self.path, capture_output=True, check=True
        ).stdout

    def write_commit_object(self, raw: bytes) -> str:
        """Store a hand-made commit object (for tampering tests) and return its id."""
        return self.git("hash-object", "-t", "commit", "-w", "--stdin", "--literally", stdin=raw).strip()

    def bare_remote(self, name: str, path: Path) -> Path:
        run(["git", "init", "-q", "--bare", str(path)], env=self.env())
        self.git("remote", "add", name, str(path))
        self.remotes[name] = path
        return path

    def push(
        self, remote: str = "origin", refspec: str = "HEAD:refs/heads/main", *, force: bool = False
    ) -> None:
        self.git("push", "-q", *(["--force"] if force else []), remote, refspec)


def tamper_message(raw: bytes, new_message: bytes) -> bytes:
    """Keep a commit's headers and signature, replace its message: the signature no longer matches."""
    headers, _, _ = raw.partition(b"\n\n")
    return headers + b"\n\n" + new_message


def short_key_id(fingerprint: str) -> str:
    return re.sub(r"\s", "", fingerprint)[-8:]
