"""Proving who signed a commit: OpenPGP and SSH verification, and the fast-forward guard.

``keys`` and ``decide`` are pure; ``gpg`` and ``ssh`` are the only modules
in gitward that run gpg and ssh-keygen, each in a throwaway home.
"""
