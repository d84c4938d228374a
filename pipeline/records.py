"""What every stage shares about records: identity, sizes, text access, the keep rule, removal reasons."""

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datatrove.data import Document

CONTENT = "content"
IDENTITY = ("repo_name", "path", "blob_id")
# Metadata keys a stage sets on a document it removes; writers of removed/ turn them into columns.
REMOVAL_KEYS = ("removed_by", "removal_reason", "kept_repo_name", "kept_path")

# SPEC keep rule: license rank first (lower is better), then popularity/recency descending, then identity.
LICENSE_RANK = {"permissive": 0, "no_license": 1}
KEEP_FIELDS = ("license_type", "star_events_count", "fork_events_count", "revision_date", "blob_id",
               "repo_name", "path")


@dataclass(slots=True)
class CodeDocument(Document):
    """A datatrove Document carrying what the reader measured of its text: UTF-8 size and SHA-256 (for
    input_ids), so stages do not encode and hash every file again. The measures belong to one text
    object (`measured`): once a stage rewrites the text they are stale and are computed afresh."""

    measured: str | None = None
    nbytes: int = 0
    sha256: bytes | None = None

    def measure(self, nbytes: int, sha256: bytes | None = None) -> None:
        self.measured, self.nbytes, self.sha256 = self.text, nbytes, sha256


def text_sha256(doc: Document) -> bytes:
    """SHA-256 of the document's text as UTF-8."""
    if getattr(doc, "measured", None) is doc.text and doc.sha256 is not None:
        return doc.sha256
    return hashlib.sha256((doc.text or "").encode("utf-8", "surrogatepass")).digest()


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of `data`, which The Stack uses as `blob_id`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def utf8_len(text: str) -> int:
    """UTF-8 size of `text` without encoding ASCII text (the common case for code)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def doc_bytes(doc: Document) -> int:
    text = doc.text
    if not text:
        return 0
    if getattr(doc, "measured", None) is text:
        return doc.nbytes
    return utf8_len(text)


def get_text(doc: Document, text_field: str = CONTENT) -> str:
    """The text a stage reads: `content`, another string column, or the turns of a `messages` list."""
    if text_field == CONTENT:
        return doc.text or ""
    value = doc.metadata.get(text_field)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return "\n".join(str(turn.get("content") or "") for turn in value)


def license_rank(license_type: str | None) -> int:
    if license_type is None:
        return 3  # a missing value ranks last
    return LICENSE_RANK.get(license_type, 2)


def keep_order(table: pa.Table) -> pa.Array:
    """Row indices of `table`, best first by the SPEC keep rule (missing values rank last).

    `table` holds any of KEEP_FIELDS; absent columns count as missing for every row. Ties between
    sharding layouts cannot occur: the rule ends on the record identity.
    """
    n = table.num_rows
    lic = table["license_type"] if "license_type" in table.column_names else pa.nulls(n, pa.string())
    known = pc.index_in(lic, value_set=pa.array(list(LICENSE_RANK)))
    rank = pc.if_else(pc.is_null(lic), 3, pc.fill_null(known, 2))
    keys = pa.table({"_license_rank": rank})
    sort_keys = [("_license_rank", "ascending", "at_end")]
    for name, order in zip(KEEP_FIELDS[1:], ["descending"] * 3 + ["ascending"] * 3, strict=True):
        column = table[name] if name in table.column_names else pa.nulls(n)
        keys = keys.append_column(name, column)
        sort_keys.append((name, order, "at_end"))
    return pc.sort_indices(keys, sort_keys=sort_keys)


def keep_rank(table: pa.Table) -> np.ndarray:
    """Each row's position in the keep rule's order (0 = best)."""
    rank = np.empty(table.num_rows, np.int64)
    rank[keep_order(table).to_numpy()] = np.arange(table.num_rows)
    return rank


def duplicate_reason(kept_blob_id: str) -> str:
    return f"duplicate_of:{kept_blob_id}"


def duplicate_repo_reason(kept_repo: str) -> str:
    return f"duplicate_repo_of:{kept_repo}"


def filter_reason(rule: str, value: float | int | str) -> str:
    """`filter:<rule>=<measured value>`, with floats shortened so reasons stay readable."""
    if isinstance(value, float):
        value = f"{value:.4g}"
    return f"filter:{rule}={value}"


def reason_group(reason: str) -> str:
    """The part of a removal reason that is counted in `details` (drops the measured value / ids)."""
    head = reason.split("=", 1)[0]
    for prefix in ("duplicate_of:", "duplicate_repo_of:"):
        if head.startswith(prefix):
            return prefix[:-1]
    return head
