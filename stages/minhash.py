"""MinHash signatures and Jaccard helpers over uint64 shingle hashes (a numba kernel).

Permutation i maps a shingle hash x to `a_i * x + b_i mod 2**64` (a_i odd, so it is a bijection); the
shingle hashes are already uniformly mixed, which is what this multiply-add family needs to behave
min-wise. Signatures are 64-bit, so two different minima practically never collide and
`P[sig_a[i] == sig_b[i]] = J(a, b)`.
"""

import numba as nb
import numpy as np

U64 = np.uint64
EMPTY = np.iinfo(np.uint64).max  # every value of the signature of an empty set


@nb.njit(cache=True, nogil=True)
def _signatures(values, offsets, a, b):
    docs = offsets.shape[0] - 1
    k = a.shape[0]
    out = np.full((docs, k), EMPTY, np.uint64)
    for d in range(docs):
        row = out[d]
        for j in range(offsets[d], offsets[d + 1]):
            x = values[j]
            for i in range(k):
                h = a[i] * x + b[i]
                if h < row[i]:
                    row[i] = h
    return out


class MinHasher:
    """`num_perm` seeded permutations; the same (num_perm, seed) gives the same signatures everywhere."""

    def __init__(self, num_perm: int = 256, seed: int = 42):
        self.num_perm, self.seed = num_perm, seed
        rng = np.random.default_rng(seed)
        self.a = rng.integers(0, EMPTY, num_perm, dtype=np.uint64, endpoint=True) | U64(1)
        self.b = rng.integers(0, EMPTY, num_perm, dtype=np.uint64, endpoint=True)

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """The signature (num_perm uint64) of one shingle set; all EMPTY for an empty set."""
        shingles = np.ascontiguousarray(shingles, dtype=np.uint64)
        return _signatures(shingles, np.array([0, len(shingles)], np.int64), self.a, self.b)[0]

    def signatures(self, values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Signatures of many sets stored flat (set d = values[offsets[d]:offsets[d+1]]): (docs, num_perm)."""
        return _signatures(np.ascontiguousarray(values, np.uint64), np.asarray(offsets, np.int64), self.a, self.b)


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray | float:
    """Fraction of equal signature values: an unbiased estimate of the Jaccard similarity.
    Works on one pair of signatures or row-wise on two (n, num_perm) matrices."""
    equal = np.count_nonzero(np.asarray(sig_a) == np.asarray(sig_b), axis=-1)
    return equal / np.shape(sig_a)[-1]


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sets given as arrays of unique values (any order)."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


@nb.njit(cache=True, nogil=True)
def _pair_estimates(signatures, ia, ib):
    k = signatures.shape[1]
    out = np.empty(ia.shape[0], np.float64)
    for p in range(ia.shape[0]):
        a, b = signatures[ia[p]], signatures[ib[p]]
        equal = 0
        for i in range(k):
            equal += a[i] == b[i]
        out[p] = equal / k
    return out


@nb.njit(cache=True, nogil=True)
def _pair_jaccard(flat, offsets, ia, ib):
    """Merge-count the intersections of sorted sets; NaN where a set is empty (not stored)."""
    out = np.empty(ia.shape[0], np.float64)
    for p in range(ia.shape[0]):
        i, i_end = offsets[ia[p]], offsets[ia[p] + 1]
        j, j_end = offsets[ib[p]], offsets[ib[p] + 1]
        size = (i_end - i) + (j_end - j)
        if i == i_end or j == j_end:
            out[p] = np.nan
            continue
        inter = 0
        while i < i_end and j < j_end:
            if flat[i] < flat[j]:
                i += 1
            elif flat[i] > flat[j]:
                j += 1
            else:
                inter += 1
                i += 1
                j += 1
        out[p] = inter / (size - inter)
    return out


@nb.njit(cache=True, nogil=True)
def _sort_sets(flat, offsets):
    out = flat.copy()
    for s in range(offsets.shape[0] - 1):
        out[offsets[s]:offsets[s + 1]].sort()
    return out


def pair_estimates(signatures: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """`estimate_jaccard` of rows ia[p] and ib[p] of a signature matrix, for every pair p."""
    return _pair_estimates(signatures, np.asarray(ia, np.int64), np.asarray(ib, np.int64))


def sort_sets(flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """A copy of `flat` with each set sorted (what `pair_jaccard` merges), for many calls on the same sets."""
    return _sort_sets(flat, np.asarray(offsets, np.int64))


def pair_jaccard(flat: np.ndarray, offsets: np.ndarray, ia: np.ndarray, ib: np.ndarray,
                 presorted: bool = False) -> np.ndarray:
    """Exact Jaccard of sets ia[p] and ib[p] (set s = flat[offsets[s]:offsets[s+1]], unique values);
    NaN where either set is empty. `presorted`: `flat` comes from `sort_sets`."""
    offsets = np.asarray(offsets, np.int64)
    flat = flat if presorted else _sort_sets(flat, offsets)
    return _pair_jaccard(flat, offsets, np.asarray(ia, np.int64), np.asarray(ib, np.int64))
