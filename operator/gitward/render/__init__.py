"""Turning a verified commit into Kubernetes objects, safely.

``limits`` bounds every dimension of the input, ``yamlsafe`` parses with the
safe loader under those bounds, ``tree`` reads the commit without a checkout
(symlinks resolved inside the tree only), ``kustomize`` builds a
kustomization with no remote bases and no plugins, and ``load`` ties them
together into :class:`~gitward.render.manifests.Manifest` objects.
"""
