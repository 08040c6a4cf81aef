"""Every change attempt, recorded: GitOpsRevision records, Events and audit log lines."""
