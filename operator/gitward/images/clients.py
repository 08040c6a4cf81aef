"""One registry client per set of registry settings, shared by every app that uses them.

A :class:`~gitward.images.registry.RegistryClient` holds a TLS context and a pool of keep-alive
connections; making one per reconcile would cost a TLS handshake per registry per app. Clients
are keyed by a digest of the settings (credentials and CA bundle), never by the settings
themselves, so no credential is kept as a dictionary key or shown in a repr.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Final

from gitward.images.registry import RegistryClient, RegistryCredentials

_MAX_CLIENTS: Final = 64


def _settings_key(credentials: bytes, ca_pem: bytes) -> str:
    digest = hashlib.sha256()
    for part in (credentials, ca_pem):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


class RegistryClients:
    """Registry clients by settings, least recently used first out; safe to share between threads."""

    def __init__(self, *, limit: int = _MAX_CLIENTS) -> None:
        self._limit = limit
        self._clients: OrderedDict[str, RegistryClient] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RegistryClients({len(self._clients)} clients)"

    def client(self, *, credentials: bytes = b"", ca_pem: bytes = b"") -> RegistryClient:
        """The client for these settings (``credentials`` a ``.dockerconfigjson``), made on first use.

        Raises :class:`~gitward.images.registry.InvalidRegistrySettingsError` for settings that
        cannot be used; its message quotes nothing of them.
        """
        key = _settings_key(credentials, ca_pem)
        with self._lock:
            found = self._clients.get(key)
            if found is not None:
                self._clients.move_to_end(key)
                return found
        made = RegistryClient(
            credentials=RegistryCredentials.from_dockerconfigjson(credentials) if credentials else None,
            ca_pem=ca_pem or None,
        )
        with self._lock:
            found = self._clients.get(key)
            if found is not None:
                made.close()
                return found
            self._clients[key] = made
            while len(self._clients) > self._limit:
                _, oldest = self._clients.popitem(last=False)
                oldest.close()
        return made

    def close(self) -> None:
        """Close every client's connections."""
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for made in clients:
            made.close()
