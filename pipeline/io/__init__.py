"""Readers, writers and intermediates: everything that touches files."""
