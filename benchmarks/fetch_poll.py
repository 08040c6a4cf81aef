#!/usr/bin/env python3
"""What a poll costs: gitward's fetch with nothing new vs a fresh clone, same server, same run.

Serves a generated repository (COMMITS commits over FILES manifests) from
git http-backend behind HTTPS + basic auth on loopback, then measures:

- gitward fetch into an empty cache (a first reconcile: a full fetch)
- plain `git clone --bare` of the same repository (the baseline)
- gitward fetch with a warm cache and no new commit (every later poll)
- plain `git fetch` in a warm clone with no new commit (the baseline poll)

and prints medians, bytes the server sent, and ratios. Run:
    .venv/bin/python benchmarks/fetch_poll.py [--commits 300] [--files 60] [--rounds 15]
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from gitward.api.resources import Namespace, SourceRule
from gitward.source import git, urls
from gitward.source.allow import AllowedSource
from support.gitservers import HttpsGitServer
from support.signing import WorkRepo


def build_repository(root: Path, commits: int, files: int) -> WorkRepo:
    work = WorkRepo.create(root / "work")
    work.bare_remote("origin", root / "srv" / "app.git")
    for index in range(commits):
        changed = {
            f"deploy/manifest-{(index * 7 + k) % files:03d}.yaml": (
                f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{k}\ndata:\n"
                + "".join(f"  key{j}: value-{index}-{k}-{j}-{os.urandom(8).hex()}\n" for j in range(40))
            )
            for k in range(5)
        }
        work.commit(changed, message=f"change {index}")
    work.push()
    return work


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--files", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gitward-bench-") as tmp:
        root = Path(tmp)
        print(f"building a repository: {args.commits} commits over {args.files} manifests ...", flush=True)
        build_repository(root, args.commits, args.files)
        pack_size = sum(
            p.stat().st_size for p in (root / "srv" / "app.git" / "objects").rglob("*") if p.is_file()
        )
        with HttpsGitServer(root / "srv", root / "tls") as server:
            url = server.url("app.git")
            creds = git.Credentials(
                username=server.username, password=server.password, ca_cert=server.ca_cert.read_text()
            )
            source = AllowedSource(urls.parse(url), "main", SourceRule(url, ("main",)), Namespace("bench"))
            env = {
                "PATH": os.environ["PATH"],
                "HOME": str(root),
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": "/dev/null",
                "GIT_TERMINAL_PROMPT": "0",
            }
            basic = base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
            auth = [
                "-c",
                f"http.sslCAInfo={server.ca_cert}",
                "-c",
                f"http.extraHeader=Authorization: Basic {basic}",
            ]

            def measure(label: str, action, rounds: int) -> tuple[float, float]:
                times, sent = [], []
                for _ in range(rounds):
                    before = server.sent_bytes
                    times.append(timed(action))
                    sent.append(server.sent_bytes - before)
                median = statistics.median(times)
                print(
                    f"  {label:<46} median {median * 1000:8.1f} ms   server sent {statistics.median(sent):>10,.0f} B"
                )
                return median, statistics.median(sent)

            clone_rounds = max(3, args.rounds // 3)
            counter = iter(range(10_000))

            def gitward_cold() -> None:
                opts = git.FetchOptions(cache_root=root / f"cold-{next(counter)}", timeout=120)
                git.fetch(source, app_uid="bench", credentials=creds, options=opts)

            def plain_clone() -> None:
                target = root / f"clone-{next(counter)}"
                subprocess.run(["git", *auth, "clone", "-q", "--bare", url, str(target)], env=env, check=True)

            warm = git.FetchOptions(cache_root=root / "warm", timeout=120)
            git.fetch(source, app_uid="bench", credentials=creds, options=warm)
            baseline_clone = root / "baseline-warm"
            subprocess.run(
                ["git", *auth, "clone", "-q", "--bare", url, str(baseline_clone)], env=env, check=True
            )

            def gitward_poll() -> None:
                checkout = git.fetch(source, app_uid="bench", credentials=creds, options=warm)
                assert not checkout.fetched

            def plain_poll() -> None:
                subprocess.run(
                    ["git", *auth, "fetch", "-q", url, "+refs/heads/main:refs/heads/main"],
                    cwd=baseline_clone, env=env, check=True,
                )  # fmt: skip

            print(f"repository: {pack_size / 1e6:.1f} MB of objects on the server; {args.rounds} poll rounds, "
                  f"{clone_rounds} clone rounds")  # fmt: skip
            cold, cold_bytes = measure(
                "gitward fetch, empty cache (first reconcile)", gitward_cold, clone_rounds
            )
            clone, clone_bytes = measure("git clone --bare (baseline)", plain_clone, clone_rounds)
            poll, poll_bytes = measure("gitward poll, nothing new", gitward_poll, args.rounds)
            plain, _ = measure("git fetch in a warm clone, nothing new (baseline)", plain_poll, args.rounds)
            print()
            print(
                f"gitward poll / fresh clone:          {poll / clone:6.3f}  (time)   {poll_bytes / clone_bytes:8.5f}  (bytes)"
            )
            print(f"gitward poll / plain no-op fetch:    {poll / plain:6.3f}  (time)")
            print(
                f"gitward first fetch / plain clone:   {cold / clone:6.3f}  (time)   {cold_bytes / clone_bytes:8.3f}  (bytes)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
