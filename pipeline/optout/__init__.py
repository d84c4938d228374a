"""Opt-out: parse requests, verify ownership, keep an append-only registry, apply it to a release."""
