"""The image gate's state shared by every app, made on first use.

The gate's verification (``cryptography``) costs the process about 11 MiB of memory once imported:
an operator none of whose tenants gates images should not pay it. This module imports nothing
heavy; the verdict cache and the registry clients are made, and their modules imported, the first
time a commit's images are checked.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gitward.images.clients import RegistryClients
    from gitward.images.verify import VerificationCache


class SharedImages:
    """Signature verdicts by (repository, digest, keys), and one registry client per tenant's settings."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._verdicts: VerificationCache | None = None
        self._clients: RegistryClients | None = None

    @property
    def verdicts(self) -> VerificationCache:
        """The verdict cache, made on first use."""
        from gitward.images.verify import VerificationCache  # noqa: PLC0415 - imported on first use

        with self._lock:
            if self._verdicts is None:
                self._verdicts = VerificationCache()
            return self._verdicts

    @property
    def clients(self) -> RegistryClients:
        """The registry clients, made on first use."""
        from gitward.images.clients import RegistryClients  # noqa: PLC0415 - imported on first use

        with self._lock:
            if self._clients is None:
                self._clients = RegistryClients()
            return self._clients
