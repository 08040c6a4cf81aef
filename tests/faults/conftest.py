"""The fault tier kills and restarts operator processes; it shares the e2e tier's fixtures."""

from support.fixtures import git_server, operator_namespace  # noqa: F401 - fixtures
