"""gitward: deploy from Git only what can be proven.

A Kubernetes operator that applies an application's manifests only from an
allowed branch, only when every new commit is signed by a key its tenant
trusts, only after validation and a server-side dry-run, and only into the
tenant's own fenced namespaces, recording every change for audit and
rollback. ``gitward.reconcile`` is the pipeline; ``gitward.handlers`` wires it
to kopf; ``gitward.cli`` is the command line.
"""

from importlib import metadata

try:
    __version__ = metadata.version("gitward")
except metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"
