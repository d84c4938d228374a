"""Seeded choices keyed by a record's identity: reproducible whatever the batching, order or workers."""

import hashlib


def unit_intervals(*key: object, count: int = 1) -> list[float]:
    """`count` (<= 8) uniform numbers in [0, 1) determined by `key` alone."""
    digest = hashlib.blake2b("\x1f".join(map(str, key)).encode("utf-8", "surrogatepass"),
                             digest_size=8 * count).digest()
    return [int.from_bytes(digest[8 * i: 8 * i + 8], "little") / 2**64 for i in range(count)]


def unit_interval(*key: object) -> float:
    return unit_intervals(*key)[0]
