"""Repositories an attacker with push rights would make, built with git's own plumbing.

The plumbing functions add one commit to a :class:`~support.signing.WorkRepo`
(signed when a key is given, so the attack reaches the step it targets) and
return its id. :data:`ATTACKS` turns each into an attack on a tenant's
:class:`~support.operator.World`, with the reason gitward must answer it
with; the security tests and ``benchmarks/hostile_rss.py`` both use it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from support.gitservers import HttpsGitServer
from support.operator import World
from support.pipeline import configmap
from support.signing import SshIdentity, WorkRepo


def _sign_args(sign: SshIdentity | None) -> list[str]:
    if sign is None:
        return ["-c", "commit.gpgSign=false"]
    return ["-c", "gpg.format=ssh", "-c", f"user.signingKey={sign.private_key}"]


def commit_tree(work: WorkRepo, tree: str, *, message_file: Path, sign: SshIdentity | None) -> str:
    """A commit of ``tree`` on top of HEAD (if any), with its message read from a file; HEAD moves to it."""
    parents = ["-p", work.head()] if work.log() else []
    signing = ["-S"] if sign is not None else []
    sha = work.git(
        *_sign_args(sign), "commit-tree", *signing, tree, *parents, "-F", str(message_file)
    ).strip()
    work.git("update-ref", "HEAD", sha)
    return sha


def huge_message(work: WorkRepo, size: int) -> str:
    """An unsigned commit whose message is ``size`` bytes (it compresses to almost nothing on the wire)."""
    message = work.path.parent / "huge-message.txt"
    line = b"gitward will read this message in full " * 2 + b"\n"
    with message.open("wb") as out:
        for _ in range(size // len(line) + 1):
            out.write(line)
    tree = work.git("write-tree").strip()
    return commit_tree(work, tree, message_file=message, sign=None)


def fanout_tree(work: WorkRepo, *, depth: int, width: int, sign: SshIdentity) -> str:
    """A signed commit whose tree names one subtree ``width`` times per level: width**depth paths, tiny objects."""
    blob = work.git("hash-object", "-w", "--stdin", stdin=b"x\n").strip()
    tree = work.git(
        "mktree", stdin="".join(f"100644 blob {blob}\tf{i}\n" for i in range(width)).encode()
    ).strip()
    for _ in range(depth):
        entries = "".join(f"040000 tree {tree}\td{i}\n" for i in range(width))
        tree = work.git("mktree", stdin=entries.encode()).strip()
    message = work.path.parent / "fanout-message.txt"
    message.write_text("a tree that fans out\n")
    return commit_tree(work, tree, message_file=message, sign=sign)


def incompressible_file(work: WorkRepo, path: str, size: int, *, sign: SshIdentity) -> str:
    """A signed commit adding ``size`` random bytes: the pack on the wire is at least that large."""
    target = work.path / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(os.urandom(size))
    work.git("add", path)
    work.git(*_sign_args(sign), "commit", "-q", "-S", "-m", "a large file")
    return work.head()


def long_symlink(work: WorkRepo, path: str, target_length: int, *, sign: SshIdentity) -> str:
    """A signed commit with a symlink whose target is ``target_length`` bytes long."""
    blob = work.git("hash-object", "-w", "--stdin", stdin=b"a/" * (target_length // 2)).strip()
    work.git("update-index", "--add", "--cacheinfo", f"120000,{blob},{path}")
    work.git(*_sign_args(sign), "commit", "-q", "-S", "-m", "a symlink")
    return work.head()


def malformed_commit(bare: Path, work: WorkRepo) -> str:
    """Serve a commit that git's fsck refuses (an author line without a date) as ``main``.

    It goes straight into the server's repository, as a compromised or hostile server would serve it.
    """
    head = work.head()
    tree = work.git("rev-parse", f"{head}^{{tree}}").strip()
    raw = (
        f"tree {tree}\nparent {head}\nauthor Mallory <mallory@example.com> not-a-date\n"
        f"committer Mallory <mallory@example.com> not-a-date\n\nbroken\n"
    ).encode()
    env = work.env()
    git_dir = ["--git-dir", str(bare)]
    sha = work.git(
        *git_dir, "hash-object", "-t", "commit", "-w", "--stdin", "--literally", env=env, stdin=raw
    )
    sha = sha.strip()
    work.git(*git_dir, "update-ref", "refs/heads/main", sha, env=env)
    return sha


DIAMOND_LEVELS = 24
ATTACK_CONFIGMAP = "written-by-the-attack"


def _kustomization(resources: list[str]) -> str:
    items = "".join(f"  - {item!r}\n" for item in resources)
    return f"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n{items}"


def _push_huge_message(world: World, _: HttpsGitServer) -> None:
    huge_message(world.work, 64 * 1024 * 1024)


def _push_fanout(world: World, _: HttpsGitServer) -> None:
    fanout_tree(world.work, depth=7, width=10, sign=world.signer)


def _push_large_fetch(world: World, _: HttpsGitServer) -> None:
    world.patch_tenant({"limits": {"fetchBytes": "4Mi", "objectBytes": "64Mi"}})
    incompressible_file(world.work, "blobs/noise.bin", 12 * 1024 * 1024, sign=world.signer)


def _push_long_symlink(world: World, _: HttpsGitServer) -> None:
    long_symlink(world.work, "deploy/link.yaml", 1024 * 1024, sign=world.signer)


def _push_diamond(world: World, _: HttpsGitServer) -> None:
    files = {"deploy/kustomization.yaml": _kustomization(["../k0a", "../k0b"])}
    for level in range(DIAMOND_LEVELS):
        below = [f"../k{level + 1}a", f"../k{level + 1}b"] if level + 1 < DIAMOND_LEVELS else ["cm.yaml"]
        for side in "ab":
            files[f"k{level}{side}/kustomization.yaml"] = _kustomization(below)
            if level + 1 == DIAMOND_LEVELS:
                files[f"k{level}{side}/cm.yaml"] = configmap(ATTACK_CONFIGMAP, side=side)
    world.work.commit(files, sign=world.signer)


def _push_remote_https(world: World, server: HttpsGitServer) -> None:
    remote = server.url("team/outside.git") + "//deploy?ref=main"
    world.work.commit({"deploy/kustomization.yaml": _kustomization([remote])}, sign=world.signer)


def _push_remote_scp(world: World, server: HttpsGitServer) -> None:
    remote = f"git@127.0.0.1:{server.port}/team/outside.git"
    world.work.commit({"deploy/kustomization.yaml": _kustomization([remote])}, sign=world.signer)


def _push_non_json_yaml(world: World, _: HttpsGitServer) -> None:
    manifest = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: written-by-the-attack\n"
        "data:\n  blob: !!binary aGVsbG8=\n"
    )
    world.work.commit({"deploy/config.yaml": manifest}, sign=world.signer)


def _push_malformed(world: World, _: HttpsGitServer) -> None:
    world.work.commit({"deploy/config.yaml": configmap("settings", v="0")}, sign=world.signer)
    world.work.push()
    malformed_commit(world.server.root / world.repo_name, world.work)


@dataclass(frozen=True)
class Attack:
    """One class of hostile input, and the reason (and message) the operator must answer it with."""

    push: Callable[[World, HttpsGitServer], None]
    reason: str
    message: str


ATTACKS = {
    "huge-commit-message": Attack(_push_huge_message, "SourceTooLarge", "budget for one object"),
    "tree-fan-out": Attack(_push_fanout, "SourceTooLarge", "entries"),
    "fetch-over-budget": Attack(_push_large_fetch, "SourceTooLarge", "fetch is larger than the budget"),
    "long-symlink-target": Attack(_push_long_symlink, "SymlinkOutOfBounds", "deploy/link.yaml"),
    "kustomize-diamond": Attack(_push_diamond, "RenderTooLarge", "kustomization"),
    "kustomize-remote-https": Attack(_push_remote_https, "RemoteRefForbidden", "outside.git"),
    "kustomize-remote-scp": Attack(_push_remote_scp, "RemoteRefForbidden", "outside.git"),
    "yaml-not-json": Attack(_push_non_json_yaml, "YAMLRejected", "data.blob"),
    "malformed-commit": Attack(_push_malformed, "SourceRejected", "integrity"),
}
