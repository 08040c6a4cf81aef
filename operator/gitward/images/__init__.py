"""The image gate: which images a tenant's manifests may run, pinned to what, signed by whom.

``refs``, ``policy``, ``keys``, ``cosign`` and ``budget`` are pure; ``registry`` is the
only module in gitward that talks to container registries; ``verify`` runs the gate in
order (the pure policy before any network access) through a registry client it is given.
"""
