"""Fixtures for the tiers that run the operator as a process (e2e, security): imported by their conftest."""

from __future__ import annotations

import pytest

from support.gitservers import HttpsGitServer
from support.kube import temporary_namespace
from support.operator import OperatorProcess, World


@pytest.fixture(scope="module")
def operator_namespace(admin):
    with temporary_namespace(admin, "gitward-system") as name:
        yield name


@pytest.fixture(scope="module")
def git_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-git")
    (root / "srv").mkdir()
    with HttpsGitServer(root / "srv", root / "tls") as server:
        yield server


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    """Extra `gitward run` flags; a test module overrides this fixture to run the operator differently."""
    return ()


@pytest.fixture(scope="module")
def operator(kubeconfig, crds, operator_namespace, operator_args, tmp_path_factory):
    root = tmp_path_factory.mktemp("operator")
    process = OperatorProcess(
        kubeconfig, operator_namespace, root / "cache", root / "operator.log", *operator_args
    )
    with process:
        yield process


@pytest.fixture
def world(tmp_path, admin, git_server, operator_namespace, crds):
    created = World(tmp_path, admin, git_server, operator_namespace)
    yield created
    created.cleanup()
