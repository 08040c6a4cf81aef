"""The image has what the code runs, and nothing to build with (checked from the Dockerfile: no Docker engine here)."""

from __future__ import annotations

import re

import yaml

from gitward import processes
from gitward.source.git import FetchOptions
from gitward.trust.gpg import OpenPGPVerifier
from gitward.trust.keys import TrustedKeys
from gitward.trust.ssh import SSHVerifier
from support.paths import REPO

# Which Debian package provides each executable the code starts.
PROVIDED_BY = {"git": "git", "ssh": "openssh-client", "ssh-keygen": "openssh-client", "gpg": "gnupg"}
# Essential packages are in every Debian base image (slim included) and cannot be removed.
ESSENTIAL = {"prlimit": "util-linux"}


def final_stage() -> str:
    text = (REPO / "Dockerfile").read_text()
    return re.split(r"^FROM ", text, flags=re.MULTILINE)[-1]


def executables_the_code_runs() -> set[str]:
    fetch = FetchOptions(cache_root=REPO)
    operator_args = next(
        doc
        for doc in yaml.safe_load_all((REPO / "manifests" / "operator.yaml").read_text())
        if doc["kind"] == "Deployment"
    )["spec"]["template"]["spec"]["containers"][0]["args"]
    kustomize = next(a.split("=", 1)[1] for a in operator_args if a.startswith("--kustomize="))
    sops = next(a.split("=", 1)[1] for a in operator_args if a.startswith("--sops="))
    return {
        fetch.git,
        fetch.ssh,
        OpenPGPVerifier([]).gpg,
        SSHVerifier(TrustedKeys()).ssh_keygen,
        kustomize.split()[0],
        sops.rsplit("/", 1)[-1],
        processes.ResourceLimits(address_space=1).prefix()[0].rsplit("/", 1)[-1],
    }


def test_every_executable_the_code_runs_is_in_the_final_stage():
    """git, ssh, gpg, ssh-keygen from pinned packages; prlimit from Essential util-linux; kustomize, sops copied in."""
    stage = final_stage()
    runs = executables_the_code_runs()
    assert runs == {"git", "ssh", "gpg", "ssh-keygen", "kustomize", "sops", "prlimit"}
    assert "bookworm" in stage.splitlines()[0]  # a Debian base: util-linux (prlimit) is Essential there
    for executable in runs - {"kustomize", "sops", *ESSENTIAL}:
        package = PROVIDED_BY[executable]
        assert re.search(rf"\b{re.escape(package)}=\S+", stage), (
            f"{package} (for {executable}) is not installed, pinned"
        )
    assert re.search(r"COPY --from=\S+ \S*/kustomize /usr/local/bin/kustomize", stage)
    assert re.search(r"COPY --from=\S+ \S*/sops /usr/local/bin/sops", stage)


def test_the_final_stage_runs_as_non_root_with_no_build_tools():
    """USER is a numeric non-root id; no compiler, Go toolchain or pip cache reaches the runtime image."""
    stage = final_stage()
    assert re.search(r"^USER 65532:65532$", stage, flags=re.MULTILINE)
    assert stage.startswith("python:")
    assert "slim" in stage.splitlines()[0]
    for tool in ("build-essential", "gcc", "golang", "make "):
        assert tool not in stage
    assert "--no-cache-dir" in stage
    assert "rm -rf /var/lib/apt/lists/*" in stage


def test_base_images_are_pinned():
    """Every FROM names an exact version, not latest or a bare major."""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            image = line.split()[1]
            assert re.search(r":\d+\.\d+\.\d+", image), image


def stage(name: str) -> str:
    text = (REPO / "Dockerfile").read_text()
    found = [
        part for part in re.split(r"^FROM ", text, flags=re.MULTILINE) if re.match(rf"\S+ AS {name}\n", part)
    ]
    assert len(found) == 1, f"no single build stage named {name}"
    return found[0]


def test_sops_is_built_from_the_module_the_tests_pin_and_copied_in():
    """The image's sops is the one the tests run: built from hack/tools/sops's go.mod and go.sum, read-only."""
    sops = stage("sops")
    assert sops.startswith("golang:")
    copied = re.search(r"^COPY (.+) \./$", sops, flags=re.MULTILINE)
    assert copied, "the sops stage copies no module"
    assert set(copied.group(1).split()) == {
        f"hack/tools/sops/{name}" for name in ("go.mod", "go.sum", "tools.go")
    }
    assert "-mod=readonly" in sops
    assert re.search(
        r"go build .*-o /out/sops github\.com/getsops/sops/v3/cmd/sops$", sops, flags=re.MULTILINE
    )
    go_mod = (REPO / "hack" / "tools" / "sops" / "go.mod").read_text()
    assert re.search(r"^require github\.com/getsops/sops/v3 v3\.\d+\.\d+$", go_mod, flags=re.MULTILINE)
    assert re.search(r"COPY --from=sops /out/sops /usr/local/bin/sops", final_stage())
