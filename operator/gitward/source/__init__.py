"""Getting a commit from Git: which URLs and branches are allowed, and fetching them safely.

``urls`` and ``allow`` are pure decisions; ``git`` is the only module in
gitward that runs the git CLI.
"""
