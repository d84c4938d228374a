"""exact_dedup: identical contents (SHA-256, optionally after collapsing whitespace) keep one record."""

import hashlib
import re

import numpy as np
import pyarrow as pa
from datatrove.data import Document

from pipeline.config import StageOptions
from pipeline.dedup import ClusterStep, SignatureStep
from pipeline.records import CONTENT, get_text, text_sha256
from pipeline.step import GlobalStage

_WHITESPACE = re.compile(r"\s+")


class ExactDedupOptions(StageOptions):
    normalize_whitespace: bool = False  # collapse runs of whitespace and strip before hashing


class ExactDedupSignature(SignatureStep):
    def signature(self, docs: list[Document]):
        digests = []
        for doc in docs:
            if self.options.text_field == CONTENT and not self.options.normalize_whitespace:
                digests.append(text_sha256(doc)[:16])  # usually measured by the reader
                continue
            text = get_text(doc, self.options.text_field)
            if self.options.normalize_whitespace:
                text = _WHITESPACE.sub(" ", text).strip()
            digests.append(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16])
        partition = np.array([d[0] for d in digests], dtype=np.int64) % self.partitions
        return {"hash": pa.array(digests, pa.binary(16))}, partition


class ExactDedupCluster(ClusterStep):
    def groups(self, table: pa.Table) -> np.ndarray:
        """Group id = the 128-bit content hash, as the index of its first occurrence."""
        hashes = table["hash"].to_pylist()
        first: dict[bytes, int] = {}
        return np.array([first.setdefault(h, i) for i, h in enumerate(hashes)], dtype=np.int64)


class ExactDedup(GlobalStage):
    """SPEC `exact_dedup`: one record per distinct content, the keep rule's best."""

    kind = "exact_dedup"
    Options = ExactDedupOptions

    def signature_step(self, workdir, schema, partitions):
        return ExactDedupSignature(self.name, self.options, workdir, schema, partitions)

    def cluster_step(self, workdir, ranks):
        return ExactDedupCluster(self.name, self.options, workdir, ranks)
