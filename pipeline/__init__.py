"""codecurate: a data curation pipeline for code corpora, built on datatrove."""

__version__ = "0.1.0"
