"""The only package that talks to the Kubernetes API (an import-linter contract keeps it so)."""
