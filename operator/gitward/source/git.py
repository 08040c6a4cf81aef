"""The git layer's public face: what the pipeline uses, from the modules that each do one job.

``runner`` runs git hardened and under the tenant's budget (the only place
git is started), ``credentials`` holds and scrubs secrets, ``fetch`` looks
at and fetches the allowed branch into the app's cache, ``repository``
answers questions about what was fetched, ``entries`` holds plain values.
"""

from __future__ import annotations

from gitward.source.credentials import Credentials, scrub
from gitward.source.entries import TreeEntry
from gitward.source.fetch import (
    HEAD_REF,
    SHA_RE,
    Checkout,
    cache_dir,
    fetch,
    local_head,
    ls_remote_head,
    remote_head,
)
from gitward.source.repository import Repository
from gitward.source.runner import FetchOptions, GitRunner, throwaway_home

__all__ = [
    "HEAD_REF",
    "SHA_RE",
    "Checkout",
    "Credentials",
    "FetchOptions",
    "GitRunner",
    "Repository",
    "TreeEntry",
    "cache_dir",
    "fetch",
    "local_head",
    "ls_remote_head",
    "remote_head",
    "scrub",
    "throwaway_home",
]
