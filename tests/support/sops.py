"""Real sops and age for tests: encrypt Secrets the way Flux users do, decrypt as an oracle.

The binaries are the ones ``hack/cluster build`` compiles from the Go modules
pinned in hack/tools/sops and hack/tools/age (the operator image carries the
same sops). Every run gets a throwaway HOME and working directory, so no
``.sops.yaml``, ``~/.config/sops/age/keys.txt`` or user setting leaks in, and
proxies that point at a closed port, so nothing can reach past 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from support.gitservers import free_port
from support.toolpaths import age_keygen_binary, sops_binary

# What Flux's documentation tells users to encrypt: only the values of a Secret, never its metadata.
FLUX_ENCRYPTED_REGEX = "^(data|stringData)$"


class ToolError(AssertionError):
    """A real tool exited non-zero; ``stderr`` says why (raised so an oracle never fails silently)."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{Path(argv[0]).name} exited {returncode}: {stderr.strip()}\n(argv: {list(argv)})")
        self.returncode = returncode
        self.stderr = stderr


def offline_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: a throwaway HOME, and proxies on a closed port for anything not on loopback.

    Go's HTTP client never proxies loopback addresses, so a test server on 127.0.0.1 is still
    reached directly, while any other address fails at once instead of leaving the machine.
    """
    closed = f"http://127.0.0.1:{free_port()}"
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C",
        "LC_ALL": "C",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "HTTPS_PROXY": closed,
        "HTTP_PROXY": closed,
        "https_proxy": closed,
        "http_proxy": closed,
        "NO_PROXY": "",
        "no_proxy": "",
        **(extra or {}),
    }


def run_tool(
    argv: Sequence[str], *, env: dict[str, str], cwd: Path, stdin: bytes | None = None, timeout: float = 120
) -> str:
    """Run a tool; its stdout, or :class:`ToolError` with its stderr."""
    result = subprocess.run(
        list(argv), env=env, cwd=cwd, input=stdin, capture_output=True, check=False, timeout=timeout
    )
    if result.returncode != 0:
        raise ToolError(argv, result.returncode, result.stderr.decode(errors="replace"))
    return result.stdout.decode()


def age_keypair() -> tuple[str, str]:
    """A fresh age key pair from the real age-keygen: (identity ``AGE-SECRET-KEY-1...``, recipient ``age1...``).

    The identity is the bare secret-key line: what ``SOPS_AGE_KEY`` takes, and what a Flux
    ``sops-age`` Secret's ``age.agekey`` holds (there with age-keygen's comment lines, which are optional).
    """
    with tempfile.TemporaryDirectory(prefix="gitward-age-") as tmp:
        out = run_tool([age_keygen_binary()], env=offline_env(Path(tmp)), cwd=Path(tmp))
    identity = next(line for line in out.splitlines() if line.startswith("AGE-SECRET-KEY-1"))
    recipient = next(
        line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("# public key:")
    )
    return identity, recipient


def _sops(args: Sequence[str], text: str, *, env_extra: dict[str, str] | None = None) -> str:
    with tempfile.TemporaryDirectory(prefix="gitward-sops-") as tmp:
        root = Path(tmp)
        (root / "home").mkdir()
        # An empty config named outright: sops does not walk up looking for a machine's .sops.yaml.
        config = root / "sops-config.yaml"
        config.write_text("")
        source = root / "secret.yaml"  # the extension tells sops the format
        source.write_text(text)
        env = offline_env(root / "home", {"SOPS_DISABLE_VERSION_CHECK": "1", **(env_extra or {})})
        return run_tool([sops_binary(), "--config", str(config), *args, str(source)], env=env, cwd=root)


def sops_encrypt(plaintext_yaml: str, recipients: str | Sequence[str]) -> str:
    """Encrypt a Kubernetes Secret's YAML as Flux users do: only ``data``/``stringData``, to age recipients."""
    keys = [recipients] if isinstance(recipients, str) else list(recipients)
    return _sops(
        ["encrypt", "--encrypted-regex", FLUX_ENCRYPTED_REGEX, "--age", ",".join(keys)], plaintext_yaml
    )


def sops_decrypt(text: str, identity: str) -> str:
    """Decrypt with the real sops (an oracle), the identity passed in ``SOPS_AGE_KEY``.

    Raises :class:`ToolError` when sops cannot decrypt (for example, with another identity).
    """
    return _sops(["decrypt"], text, env_extra={"SOPS_AGE_KEY": identity})
