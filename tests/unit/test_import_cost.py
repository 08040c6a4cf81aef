"""What the operator imports at start: the image gate's cryptography only once a tenant gates images."""

from __future__ import annotations

import subprocess
import sys


def imported_after(statement: str) -> set[str]:
    probe = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return set(done.stdout.split())


def test_the_operator_starts_without_the_image_verifier():
    """About 11 MiB of resident memory that an operator gating no image never needs."""
    modules = imported_after("import gitward.handlers, gitward.cli")
    assert "gitward.reconcile.steps" in modules
    assert "cryptography" not in modules
    assert "gitward.images.verify" not in modules


def test_the_verifier_comes_with_its_first_use():
    modules = imported_after("from gitward.images.shared import SharedImages\nSharedImages().verdicts")
    assert "cryptography" in modules


def test_the_operator_never_imports_the_kubernetes_package():
    """kubernetes and pydantic cost about 20 MiB at import; gitward's own client on urllib3 replaces them."""
    modules = imported_after(
        "import gitward.kube.objects, gitward.kube.cached, gitward.kube.leases, gitward.kube.reviews, "
        "gitward.kube.reads, gitward.kube.clients, gitward.kube.watching, gitward.cli"
    )
    assert "gitward.kube.http" in modules
    assert "kubernetes" not in modules
    assert "pydantic" not in modules


def test_the_kube_layer_works_where_the_kubernetes_package_cannot_be_imported():
    """With ``kubernetes`` made unimportable, the whole kube layer and the command line still load."""
    modules = imported_after(
        "sys.modules['kubernetes'] = None\n"
        "import gitward.kube.objects, gitward.kube.cached, gitward.kube.leases, gitward.kube.reviews, gitward.cli\n"
        "from gitward.kube import clients\n"
        "clients.api_client(clients.config.Configuration(host='https://127.0.0.1:1'))"
    )
    assert "gitward.kube.clients" in modules
