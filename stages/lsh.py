"""Locality-sensitive hashing over MinHash signatures: band keys, candidate pairs from buckets,
connected components and star clusters, as array operations whose memory follows the rows given, not
the corpus.

A band key is one 64-bit hash of (band index, the band's `rows` signature values); documents sharing a
key share a bucket. Keys are spread uniformly, so a key range is a partition (`key_partition`) and a
sub-range of it a chunk: buckets are never split between tasks or chunks.
"""

from collections.abc import Callable

import numba as nb
import numpy as np

from stages.shingles import fmix64

U64 = np.uint64
_BAND_SALT = U64(0xD6E8FEB86659FD93)


@nb.njit(cache=True, nogil=True)
def _band_keys(signatures, bands, rows):
    docs = signatures.shape[0]
    out = np.empty((docs, bands), np.uint64)
    for d in range(docs):
        for band in range(bands):
            h = _BAND_SALT * U64(band + 1)
            for r in range(band * rows, (band + 1) * rows):
                h = fmix64(h ^ signatures[d, r])
            out[d, band] = h
    return out


@nb.njit(cache=True, nogil=True)
def _row_hashes(signatures):
    out = np.empty(signatures.shape[0], np.uint64)
    for d in range(signatures.shape[0]):
        h = _BAND_SALT
        for i in range(signatures.shape[1]):
            h = fmix64(h ^ signatures[d, i])
        out[d] = h
    return out


def candidate_probability(jaccard: float | np.ndarray, bands: int, rows: int):
    """The LSH S-curve: chance that two sets of this similarity share at least one band."""
    return 1 - (1 - np.asarray(jaccard, float) ** rows) ** bands


def choose_bands(threshold: float, num_perm: int, recall_at_threshold: float = 0.99) -> tuple[int, int]:
    """The most selective banding (longest bands) that still makes pairs exactly at the threshold
    candidates with probability >= `recall_at_threshold`; pairs above it are candidates even more often."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if candidate_probability(threshold, bands, rows) >= recall_at_threshold:
            return bands, rows
    return num_perm, 1


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (document, band): the band index and the band's values hashed together, so
    one key column holds every band's buckets."""
    return _band_keys(np.ascontiguousarray(signatures), bands, rows)


def signature_hashes(signatures: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each whole signature: equal hashes mean identical signatures (estimate 1.0)."""
    return _row_hashes(np.ascontiguousarray(signatures))


@nb.njit(cache=True, nogil=True)
def _mix(values):
    out = np.empty(values.shape[0], np.uint64)
    for i in range(values.shape[0]):
        out[i] = fmix64(U64(values[i]))
    return out


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting: numpy >= 2.3 hashes instead, ~100x slower on large integer arrays."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def spread(ids: np.ndarray, partitions: int) -> np.ndarray:
    """A partition for each integer id (a mixing hash modulo `partitions`)."""
    return (_mix(np.ascontiguousarray(ids).view(np.uint64)) % U64(partitions)).astype(np.int64)


def key_partition(keys: np.ndarray, partitions: int) -> np.ndarray:
    """Partition p of a band key = the p-th of `partitions` equal ranges of the key's top 32 bits."""
    return ((np.asarray(keys, np.uint64) >> U64(32)) * U64(partitions) >> U64(32)).astype(np.int64)


def key_range(partition: int, partitions: int, chunk: int = 0, chunks: int = 1) -> tuple[int, int | None]:
    """[low, high) of the band keys in one chunk of a partition (high None = up to 2**64)."""
    first = -(-partition * 2**32 // partitions)
    last = -(-(partition + 1) * 2**32 // partitions)
    low = first + (last - first) * chunk // chunks
    high = first + (last - first) * (chunk + 1) // chunks
    return low << 32, (high << 32 if high < 2**32 else None)


def bucket_pairs(keys: np.ndarray, sig_hashes: np.ndarray, order: np.ndarray, ids: np.ndarray,
                 window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs from band rows: (a, b, same) with a < b, unique.

    In a bucket, members with identical signatures are paired with the first of them (`same`, no
    check needed); the distinct signatures are each paired with the next `window` ones (all pairs in
    buckets of up to window + 1 distinct signatures). Members are ordered by (signature hash, `order`),
    which does not depend on how the corpus was split into tasks, so neither do the pairs.
    """
    if len(keys) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, bool)
    sort = np.lexsort((order, sig_hashes, keys))
    keys, sig_hashes, ids = keys[sort], sig_hashes[sort], ids[sort]
    new_bucket = np.r_[True, keys[1:] != keys[:-1]]
    bucket = np.cumsum(new_bucket) - 1
    shared = np.bincount(bucket)[bucket] > 1
    keys, sig_hashes, ids, new_bucket = keys[shared], sig_hashes[shared], ids[shared], new_bucket[shared]
    bucket = np.cumsum(new_bucket) - 1
    new_group = new_bucket | np.r_[True, sig_hashes[1:] != sig_hashes[:-1]]
    first_of_group = np.maximum.accumulate(np.where(new_group, np.arange(len(ids)), 0))
    a_parts, b_parts = [ids[first_of_group[~new_group]]], [ids[~new_group]]
    same_count = len(b_parts[0])
    rep_ids, rep_bucket = ids[new_group], bucket[new_group]
    for distance in range(1, window + 1):
        in_bucket = rep_bucket[distance:] == rep_bucket[:-distance]
        if not in_bucket.any():
            break
        a_parts.append(rep_ids[:-distance][in_bucket])
        b_parts.append(rep_ids[distance:][in_bucket])
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    same = np.zeros(len(a), bool)
    same[:same_count] = True
    return unique_pairs(np.minimum(a, b), np.maximum(a, b), same)


def unique_pairs(a: np.ndarray, b: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each (a, b) once, sorted; `same` if any occurrence was."""
    if len(a) == 0:
        return a, b, same
    sort = np.lexsort((~same, b, a))  # within equal pairs, a `same` occurrence comes first
    a, b, same = a[sort], b[sort], same[sort]
    first = np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])]
    return a[first], b[first], same[first]


def connected_components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes of the edges (a, b), sorted, and each node's component named by its smallest node."""
    from scipy.sparse import coo_matrix  # imported here: only the cluster phases need scipy
    from scipy.sparse.csgraph import connected_components as scipy_components

    nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    if len(nodes) == 0:
        return nodes, nodes
    n = len(a)
    graph = coo_matrix((np.ones(n, np.int8), (inverse[:n], inverse[n:])), shape=(len(nodes), len(nodes)))
    count, labels = scipy_components(graph, directed=False)
    smallest = np.full(count, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(smallest, labels, nodes)
    return nodes, smallest[labels]


def csr_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The column indices of the given rows of a CSR matrix, concatenated."""
    starts, lengths = indptr[rows], indptr[rows + 1] - indptr[rows]
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return indices[np.repeat(starts, lengths) + within]


class SignatureGraph:
    """Verified edges between nodes 0..n-1, with the nodes of identical signatures (`same` edges) as one
    group: a bucket pairs such a node only with the first of them, so its own edges are not all its
    similar nodes."""

    def __init__(self, n: int, a: np.ndarray, b: np.ndarray, same: np.ndarray):
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components as scipy_components

        ones = np.ones(int(same.sum()), np.int8)
        _, self.group = scipy_components(coo_matrix((ones, (a[same], b[same])), shape=(n, n)), directed=False)
        ga, gb = self.group[a[~same]], self.group[b[~same]]
        between = ga != gb
        ga, gb = np.r_[ga[between], gb[between]], np.r_[gb[between], ga[between]]
        groups = int(self.group.max()) + 1
        self.adjacency = coo_matrix((np.ones(len(ga), bool), (ga, gb)), shape=(groups, groups)).tocsr()
        self.members = coo_matrix((np.ones(n, bool), (self.group, np.arange(n))), shape=(groups, n)).tocsr()
        sizes = np.bincount(self.group, minlength=groups)
        self.degree = (sizes - 1 + self.adjacency.astype(np.int64) @ sizes)[self.group]

    def within_two(self, node: int) -> np.ndarray:
        """The nodes within two edges of `node` (itself included), groups counting as one node."""
        adjacency = self.adjacency
        near = np.r_[self.group[node], csr_rows(adjacency.indptr, adjacency.indices, self.group[node:node + 1])]
        reach = sorted_unique(np.r_[near, csr_rows(adjacency.indptr, adjacency.indices, near)])
        return csr_rows(self.members.indptr, self.members.indices, reach)


def star_clusters(rank: np.ndarray, a: np.ndarray, b: np.ndarray, same: np.ndarray,
                  similar: Callable[[int, np.ndarray], np.ndarray], agreement: float = 0.5,
                  core: int = 32) -> np.ndarray:
    """Non-transitive clusters of nodes 0..n-1 given verified edges (a, b): each node's seed.

    A node joins a cluster only when it is similar to more than `agreement` of the cluster's core (its
    seed and first members, `core` at most), so a chain A~B~C with A !~ C is never one cluster.
    Seeds are taken most connected first (ties: `rank`, lower first); the seed's candidates (nodes within
    two edges, `SignatureGraph.within_two`) that are not yet in a cluster and are similar to the seed
    join it, best `rank` first, if they agree with its core. Then a node left alone joins the cluster
    within reach whose core it agrees with most, if that is more than `agreement`.
    """
    n = len(rank)
    if n == 0:
        return np.zeros(0, np.int64)
    graph = SignatureGraph(n, a, b, same)
    seed = np.full(n, -1, np.int64)
    clusters: dict[int, list[int]] = {}

    def agrees(node: int, cluster: list[int]) -> float:
        return float(similar(node, np.array(cluster[:core], np.int64)).mean())

    for c in np.lexsort((rank, -graph.degree)):
        if seed[c] >= 0:
            continue
        seed[c] = c
        clusters[c] = cluster = [int(c)]
        candidates = graph.within_two(c)
        candidates = candidates[seed[candidates] < 0]
        candidates = candidates[np.argsort(rank[candidates], kind="stable")]
        for x in candidates[similar(int(c), candidates)] if len(candidates) else ():
            if len(cluster) == 1 or agrees(int(x), cluster) > agreement:
                seed[x] = c
                cluster.append(int(x))
    for x in np.argsort(rank, kind="stable"):
        if len(clusters.get(x, ())) != 1:
            continue
        best, best_agreement = -1, agreement
        near = sorted_unique(seed[graph.within_two(x)])
        for k in near[np.argsort(rank[near], kind="stable")]:  # equal agreement: the best seed's cluster
            if k != x and len(clusters[k]) > 1 and (score := agrees(int(x), clusters[k])) > best_agreement:
                best, best_agreement = k, score
        if best >= 0:
            del clusters[x]
            seed[x] = best
            clusters[best].append(int(x))
    return seed
