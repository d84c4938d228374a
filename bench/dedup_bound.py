"""How much recall in the 0.70-0.85 band can ANY clustering of a sample reach at a cluster precision goal?

    .venv/bin/python bench/dedup_bound.py CORPUS_DIR [--sample 5000] [--seed 0] [--drop-generated | --as-shipped CONFIG]
                                          [--exclude-repos REGEX] [--targets 0.95 0.97 0.99]

The same uniform sample and exact ground truth as `dedup_accuracy.py` (same arguments). The metrics are
`dedup_accuracy.evaluate`'s: recall = share of the band's true pairs (0.70 <= J < 0.85) inside one
cluster, cluster precision = share of the pairs inside clusters that are true pairs (J >= 0.7).

*Bound (Lagrangian relaxation).* For a partition P let hard(P), good(P), bad(P) count the pairs inside
its clusters that are band pairs, true pairs and other pairs. With k = p / (1 - p):

    precision >= p  <=>  good >= p (good + bad)  <=>  g(P) := good - k * bad >= 0

(the partition into singletons has no pair and g = 0: feasible, recall 0). We want
R(p) = max {hard(P) : g(P) >= 0}. For every mu >= 0, L(mu) = max_P [hard(P) + mu * g(P)] >= R(p), since
a feasible P adds mu * g(P) >= 0 to its hard(P). L is a maximum of lines in mu, hence convex and
piecewise linear, with slope g(P_mu) at mu (P_mu a maximiser); it is minimised by Kelley's cutting
planes in one dimension (`Lagrangian`: solve at the minimum of the upper envelope of the lines met so
far, until L there is within --tolerance band pairs of it). R(p) <= floor(min of L over the mu solved),
whatever the stopping point.

L(mu) separates over the connected components of the true-pair graph: a cluster spanning two
components holds only non-true pairs between them (weight -mu * k <= 0), so splitting it along the
components never lowers the objective. In a component, with weights w = [band] + mu * [true]
- mu * k * [not true] on its pairs, L_c(mu) = max sum w_ij x_ij over same-cluster variables
x_ij in {0, 1} that are transitive (x_ij + x_jl - x_il <= 1 for every triple): max-weight correlation
clustering. Components of up to --milp-nodes files: exact, by HiGHS (`scipy.optimize.milp`, relative
gap 0), starting with the triangles of two true pairs closed by a non-true pair and adding violated
ones lazily. A MILP over a subset of the triangles is a relaxation, so its dual bound is an upper
bound; once its optimum is transitive it is a partition, hence optimal. If the time limit stops it, its
dual bound is used. Larger components: the LP relaxation with violated triangle inequalities added in
rounds (until none is, or a round gains < --tolerance): each LP optimum is an upper bound on L_c, the
output says when it was used. Triangles found are valid for every mu and kept. When every component
is solved exactly, one more MILP over all components at once with the precision constraint itself
(`exact_optimum`) gives R(p) exactly.

*Achievable (oracle).* Each solve also yields real partitions (the MILP's; for LP components, roundings
of the LP improved by local search), measured with `evaluate` (kept file: the one with most true
neighbours in its cluster). The oracle of a target is the best combination of the partitions found,
one per component (max hard s.t. sum of g >= 0, a small multiple-choice knapsack MILP), or the exact
optimum when that closed.
"""

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse import block_diag, coo_matrix, csr_matrix, vstack
from scipy.sparse.csgraph import connected_components

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dedup_accuracy import add_sample_arguments, evaluate, sample_and_truth  # noqa: E402

import stages.near_dedup as near_dedup  # noqa: E402

BAND = (0.70, 0.85)
CUTS_PER_ROUND = 50_000  # most violated triangles added to the LP per round


@dataclass(frozen=True)
class Counts:
    """Pairs inside the clusters of a partition: band pairs, true pairs (J >= threshold), others
    (fractional for a point of the LP relaxation)."""
    hard: float
    good: float
    bad: float

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.hard + other.hard, self.good + other.good, self.bad + other.bad)

    def slack(self, k: float) -> float:
        """g = good - k * bad: >= 0 exactly when the precision reaches p = k / (1 + k)."""
        return self.good - k * self.bad


@dataclass
class Solution:
    """A component at one (mu, k): an upper bound on L_c(mu) and the pair counts of its maximiser (the
    point whose line in mu guides the search), and the best real partition found (labels, counts)."""
    upper: float
    point: Counts
    labels: tuple[int, ...]
    counts: Counts
    method: str  # "exact", "MILP dual bound" (time limit) or "LP"


@dataclass
class Component:
    """A connected component of the true-pair graph, with all its node pairs (i < j, local ids)."""
    nodes: np.ndarray
    i: np.ndarray
    j: np.ndarray
    true: np.ndarray
    hard: np.ndarray
    candidates: dict[tuple[int, ...], Counts] = field(default_factory=dict)
    rows: csr_matrix | None = None  # triangle inequalities so far
    seconds: float = 0.0

    @property
    def size(self) -> int:
        return len(self.nodes)

    def index(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Variable of the pair {i, j} (any order)."""
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        return lo * (2 * self.size - lo - 1) // 2 + hi - lo - 1

    def square(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((self.size, self.size), np.asarray(x).dtype)
        out[self.i, self.j] = out[self.j, self.i] = x
        return out

    def counts(self, labels: tuple[int, ...]) -> Counts:
        lab = np.asarray(labels)
        same = lab[self.i] == lab[self.j]
        return Counts(int((same & self.hard).sum()), int((same & self.true).sum()), int((same & ~self.true).sum()))

    def keep(self, labels) -> tuple[int, ...]:
        """Labels in canonical form (first occurrence order), remembered as a candidate partition."""
        first: dict[int, int] = {}
        canonical = tuple(first.setdefault(int(x), len(first)) for x in labels)
        self.candidates.setdefault(canonical, self.counts(canonical))
        return canonical

    def triangles(self, i: np.ndarray, j: np.ndarray, m: np.ndarray) -> csr_matrix:
        """Rows x_ij + x_jm - x_im <= 1."""
        rows = np.repeat(np.arange(len(i)), 3)
        cols = np.stack([self.index(i, j), self.index(j, m), self.index(i, m)], 1).ravel()
        vals = np.tile([1.0, 1.0, -1.0], len(i))
        return csr_matrix((vals, (rows, cols)), shape=(len(i), len(self.i)))

    def add_triangles(self, cut: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        rows = self.triangles(*cut)
        self.rows = rows if self.rows is None else vstack([self.rows, rows], format="csr")

    def violated(self, x: np.ndarray, cap: int = CUTS_PER_ROUND) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Triples (i, j, m) with x_ij + x_jm - x_im > 1, most violated first, `cap` at most."""
        together = self.square(np.asarray(x, float))
        found = []
        for mid in range(self.size):
            excess = together[:, mid, None] + together[None, mid, :] - together - 1
            excess[mid, :] = excess[:, mid] = 0
            i, m = np.nonzero(np.triu(excess > 1e-6, 1))
            found.append(np.stack([i, np.full(len(i), mid), m, excess[i, m]], 1))
        found = np.concatenate(found)
        found = found[np.argsort(-found[:, 3], kind="stable")[:cap]]
        return found[:, 0].astype(np.int64), found[:, 1].astype(np.int64), found[:, 2].astype(np.int64)

    def tempting_triangles(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Two true pairs i~j~m whose closing pair i-m is not true: the first triangles to need."""
        not_true = ~self.square(self.true)
        np.fill_diagonal(not_true, False)
        adjacent = self.square(self.true)
        i, mid, m = [], [], []
        for j in range(self.size):
            near = np.flatnonzero(adjacent[j])
            a, b = np.triu_indices(len(near), 1)
            keep = not_true[near[a], near[b]]
            i.append(near[a][keep])
            m.append(near[b][keep])
            mid.append(np.full(int(keep.sum()), j))
        return np.concatenate(i), np.concatenate(mid), np.concatenate(m)

    def closure(self, x: np.ndarray) -> tuple[int, ...]:
        """The partition into connected components of the pairs set to 1."""
        graph = coo_matrix((np.ones(int(x.sum())), (self.i[x], self.j[x])), shape=(self.size, self.size))
        return tuple(connected_components(graph, directed=False)[1].tolist())

    def improve(self, labels: tuple[int, ...], weight: np.ndarray) -> tuple[int, ...]:
        """Local search: move single files to the best cluster (or alone) and merge the best pair of
        clusters while that raises sum w inside clusters."""
        w = self.square(weight)
        lab = np.unique(np.asarray(labels), return_inverse=True)[1]
        while True:
            moved = False
            for v in range(self.size):
                link = np.bincount(lab, weights=w[v], minlength=lab.max() + 2)  # the last: a new cluster
                best = int(np.argmax(link))
                if link[best] - link[lab[v]] > 1e-9:
                    lab[v], moved = best, True
            lab = np.unique(lab, return_inverse=True)[1]
            member = np.eye(lab.max() + 1)[lab]
            between = member.T @ w @ member
            np.fill_diagonal(between, -np.inf)
            if between.max() > 1e-9:
                a, b = np.unravel_index(np.argmax(between), between.shape)
                lab[lab == b], moved = a, True
            if not moved:
                return tuple(lab.tolist())

    def solve(self, mu: float, k: float, time_limit: float, milp_nodes: int, tolerance: float) -> Solution:
        """Upper bound on max over partitions of hard + mu * (good - k * bad), with a partition."""
        start = time.perf_counter()
        weight = self.hard + mu * self.true - mu * k * ~self.true
        if (weight >= 0).all():  # a clique of true pairs (or mu = 0): one cluster
            labels = self.keep((0,) * self.size)
            counts = self.candidates[labels]
            solution = Solution(float(weight.sum()), counts, labels, counts, "exact")
        elif self.size <= milp_nodes:
            solution = self.solve_milp(weight, start + time_limit)
        else:
            solution = self.solve_lp(weight, start + time_limit, tolerance)
        self.seconds += time.perf_counter() - start
        return solution

    def solve_milp(self, weight: np.ndarray, deadline: float) -> Solution:
        if self.rows is None:
            self.add_triangles(self.tempting_triangles())
        while True:
            result = milp(-weight, integrality=np.ones(len(weight)), bounds=Bounds(0, 1),
                          constraints=LinearConstraint(self.rows, -np.inf, 1),
                          options={"mip_rel_gap": 0, "time_limit": max(1.0, deadline - time.perf_counter())})
            x = result.x > 0.5 if result.x is not None else np.zeros(len(weight), bool)
            cut = self.violated(x)
            if result.status != 0 or not len(cut[0]):
                break
            self.add_triangles(cut)
        labels = self.keep(self.improve(self.closure(x), weight))
        counts = self.candidates[labels]
        if result.status == 0:
            return Solution(max(-result.mip_dual_bound, float(weight @ x)), counts, labels, counts, "exact")
        upper = float(np.clip(weight, 0, None).sum()) if result.mip_dual_bound is None else -result.mip_dual_bound
        return Solution(upper, counts, labels, counts, "MILP dual bound")

    def solve_lp(self, weight: np.ndarray, deadline: float, tolerance: float) -> Solution:
        """LP relaxation with violated triangle inequalities added in rounds (every LP optimum is an
        upper bound) until none is, a round gains < `tolerance` or the deadline; and the best
        local-search improvement of its roundings."""
        previous = np.inf
        while True:
            result = linprog(-weight, A_ub=self.rows, b_ub=None if self.rows is None else np.ones(self.rows.shape[0]),
                             bounds=(0, 1), method="highs-ipm")
            assert result.status == 0, result.message
            cut = self.violated(result.x)
            if not len(cut[0]) or previous + result.fun < tolerance or time.perf_counter() > deadline:
                break
            previous = -result.fun
            self.add_triangles(cut)
        x = result.x
        roundings = [self.improve(self.closure(x > t), weight) for t in (0.5, 0.99)]
        roundings.append(self.improve(tuple(range(self.size)), weight))
        labels = self.keep(max(roundings, key=lambda lab: float(weight @ (np.asarray(lab)[self.i] ==
                                                                            np.asarray(lab)[self.j]))))
        point = Counts(float(self.hard @ x), float(self.true @ x), float(~self.true @ x))
        return Solution(-result.fun, point, labels, self.candidates[labels], "LP")


def components_of(n: int, a: np.ndarray, b: np.ndarray, jac: np.ndarray) -> list[Component]:
    """Components of the true-pair graph with 2+ files, each with every pair of its files labelled."""
    true_pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    band = {(x, y) for x, y, jj in zip(a.tolist(), b.tolist(), jac.tolist(), strict=True)
            if BAND[0] - 1e-12 <= jj < BAND[1] - 1e-12}
    _, label = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    out = []
    for c in np.flatnonzero(np.bincount(label, minlength=n) > 1):
        nodes = np.flatnonzero(label == c)
        i, j = np.triu_indices(len(nodes), 1)
        keys = list(zip(nodes[i].tolist(), nodes[j].tolist(), strict=True))
        out.append(Component(nodes, i, j, np.array([p in true_pairs for p in keys]),
                             np.array([p in band for p in keys])))
    return out


@dataclass
class Evaluation:
    """One solve of L(mu) for target k over all components."""
    mu: float
    upper: float
    labels: list[tuple[int, ...]]
    methods: set[str]


class Lagrangian:
    """min over mu >= 0 of L(mu) for each target, by Kelley's method: L lies above the line of every
    point met so far (any target's: a point's line depends on k only through its counts), so the
    minimum of their upper envelope is a lower estimate of min L; solve there, until the smallest L
    solved is within `tolerance` band pairs of it. The bound is that smallest L, valid whatever the
    stopping point."""

    def __init__(self, components: list[Component], args):
        self.components, self.args = components, args
        together = sum((c.candidates[c.keep((0,) * c.size)] for c in components), Counts(0, 0, 0))
        self.points = [Counts(0, 0, 0), together]  # singletons (L >= 0) and all together (L(0) = all band pairs)

    def solve(self, mu: float, k: float) -> Evaluation:
        a = self.args
        solutions = [c.solve(mu, k, a.time_limit, a.milp_nodes, a.tolerance) for c in self.components]
        self.points.append(sum((s.point for s in solutions), Counts(0, 0, 0)))
        return Evaluation(mu, sum(s.upper for s in solutions), [s.labels for s in solutions],
                          {s.method for s in solutions})

    def envelope_minimum(self, k: float) -> tuple[float, float]:
        """(mu, value) minimising max over the points' lines, mu >= 0 (a 2-variable LP)."""
        hard = np.array([p.hard for p in self.points])
        slack = np.array([p.slack(k) for p in self.points])
        result = linprog([0, 1], A_ub=np.stack([slack, -np.ones(len(hard))], 1), b_ub=-hard,
                         bounds=[(0, None), (None, None)], method="highs")
        return float(result.x[0]), float(result.x[1])

    def __call__(self, k: float) -> list[Evaluation]:
        evaluations: list[Evaluation] = []
        while len(evaluations) < self.args.max_solves:
            mu, model = self.envelope_minimum(k)
            if evaluations and min(e.upper for e in evaluations) - model <= max(self.args.tolerance, 1e-6 * model):
                break
            if mu == 0:  # the envelope is lowest at 0: nothing below L(0) = all band pairs (all together)
                together = [c.keep((0,) * c.size) for c in self.components]
                return [Evaluation(0.0, total(self.components, together).hard, together, {"exact"})]
            evaluations.append(self.solve(mu, k))
        return evaluations


def exact_optimum(components: list[Component], k: float, time_limit: float
                  ) -> tuple[float, list[tuple[int, ...]] | None]:
    """max hard(P) s.t. good - k * bad >= 0 over all partitions at once: one MILP, the components'
    triangles added lazily as in `solve_milp` (ties: more good pairs). Returns an upper bound on hard
    (the dual bound) and the optimal partition, or None if the time limit stopped it."""
    ends = np.cumsum([0] + [len(c.i) for c in components])
    hard = np.concatenate([c.hard for c in components]).astype(float)
    true = np.concatenate([c.true for c in components])
    objective = hard + true / (1 + true.sum())  # the tie-break adds < 1 in all: floor(bound) still bounds hard
    precision = LinearConstraint(np.where(true, 1.0, -k)[None, :], 0, np.inf)
    for c in components:
        if c.rows is None:
            c.add_triangles(c.tempting_triangles())
    deadline = time.perf_counter() + time_limit
    while True:
        rows = block_diag([c.rows for c in components], format="csr")
        result = milp(-objective, integrality=np.ones(len(hard)), bounds=Bounds(0, 1),
                      constraints=[LinearConstraint(rows, -np.inf, 1), precision],
                      options={"mip_rel_gap": 0, "time_limit": max(1.0, deadline - time.perf_counter())})
        if result.status != 0:
            return (float(hard.sum()) if result.mip_dual_bound is None else -result.mip_dual_bound), None
        x = result.x > 0.5
        parts = [x[ends[q]:ends[q + 1]] for q in range(len(components))]
        cuts = [c.violated(part) for c, part in zip(components, parts, strict=True)]
        if not any(len(cut[0]) for cut in cuts):
            return -result.mip_dual_bound, [c.keep(c.closure(part)) for c, part in zip(components, parts, strict=True)]
        for c, cut in zip(components, cuts, strict=True):
            if len(cut[0]):
                c.add_triangles(cut)


def best_combination(components: list[Component], k: float) -> list[tuple[int, ...]]:
    """One candidate partition per component maximising hard pairs with sum of good - k * bad >= 0
    (ties: more good pairs)."""
    options = [list(c.candidates.items()) for c in components]
    owner = np.repeat(np.arange(len(options)), [len(o) for o in options])
    counts = [cnt for o in options for _, cnt in o]
    hard = np.array([c.hard for c in counts], float)
    good = np.array([c.good for c in counts], float)
    slack = np.array([c.slack(k) for c in counts])
    one_each = coo_matrix((np.ones(len(owner)), (owner, np.arange(len(owner)))), shape=(len(options), len(owner)))
    result = milp(-(hard + good / (1 + good.sum())), integrality=np.ones(len(owner)), bounds=Bounds(0, 1),
                  constraints=[LinearConstraint(one_each, 1, 1), LinearConstraint(slack[None, :], 0, np.inf)],
                  options={"mip_rel_gap": 0})
    first = np.r_[0, np.cumsum([len(o) for o in options])]
    return [options[owner[q]][q - first[owner[q]]][0] for q in np.flatnonzero(result.x > 0.5)]


def total(components: list[Component], labels: list[tuple[int, ...]]) -> Counts:
    return sum((c.candidates[lab] for c, lab in zip(components, labels, strict=True)), Counts(0, 0, 0))


class Measure:
    """`evaluate` on partitions given per component; each cluster keeps its file with most true
    neighbours inside it (ties: lowest index), and is named after it."""

    def __init__(self, components: list[Component], n: int, truth: tuple, values, offsets, threshold: float):
        self.components, self.n, self.truth = components, n, truth
        self.values, self.offsets, self.threshold = values, offsets, threshold
        self.seen: list[dict] = []

    def __call__(self, labels: list[tuple[int, ...]]) -> dict:
        cluster = np.arange(self.n)
        for comp, lab in zip(self.components, labels, strict=True):
            lab = np.asarray(lab)
            degree = (comp.square(comp.true) & (lab[:, None] == lab[None, :])).sum(1)
            for c in np.unique(lab):
                members = np.flatnonzero(lab == c)
                cluster[comp.nodes[members]] = comp.nodes[members[np.argmax(degree[members])]]
        r = evaluate(cluster, cluster != np.arange(self.n), self.truth, self.values, self.offsets, self.threshold)
        counts = total(self.components, labels)  # ours and `evaluate`'s must agree
        (recall, band), (precision, clustered) = r["recall 0.70-0.85"], r["cluster precision"]
        assert round(recall * band) == counts.hard and clustered == counts.good + counts.bad, (r, counts)
        assert clustered == 0 or round(precision * clustered) == counts.good, (r, counts)
        self.seen.append(r)
        return r

    def frontier(self) -> list[dict]:
        """The partitions measured that no other beats on both recall 0.70-0.85 and precision."""
        out: list[dict] = []
        measured = [r for r in self.seen if r["cluster precision"][1]]
        for r in sorted(measured, key=lambda r: (-r["cluster precision"][0], -r["recall 0.70-0.85"][0])):
            if not out or r["recall 0.70-0.85"][0] > out[-1]["recall 0.70-0.85"][0]:
                out.append(r)
        return out


HEADER = "recall 0.70-0.85 | recall 0.85-1 | cluster precision | wrongly removed |"


def cells(r: dict) -> str:
    recall, precision, wrong = r["recall 0.70-0.85"], r["cluster precision"], r["wrongly removed"]
    return (f"{recall[0]:.4f} | {r['recall 0.85-1'][0]:.3f} | {precision[0]:.4f} ({precision[1]} pairs) "
            f"| {wrong[0]} of {wrong[1]} |")


def bound_for(p: float, lagrangian: Lagrangian, measure: Measure, n_hard: int, args) -> tuple:
    """Print the solves of L(mu) for precision >= p; return (bound, Lagrangian bound, oracle's figures, how)."""
    k = p / (1 - p)
    components = lagrangian.components
    start = time.perf_counter()
    evaluations = lagrangian(k)
    bound = min(n_hard, math.floor(min(e.upper for e in evaluations) + 1e-6))
    methods = set().union(*(e.methods for e in evaluations))
    print(f"\n### precision >= {p}: {len(evaluations)} solves of L(mu), {time.perf_counter() - start:.0f}s; "
          f"components solved by: {', '.join(sorted(methods))}")
    print(f"| mu | L(mu) / band pairs (bound) | partition found: {HEADER}\n|---|---|---|---|---|---|")
    for e in sorted(evaluations, key=lambda e: e.mu):
        print(f"| {e.mu:.5g} | {e.upper / n_hard:.4f} | {cells(measure(e.labels))}")
    oracle, how = best_combination(components, k), "best combination of the partitions found"
    lagrangian_bound = bound
    if methods == {"exact"} and args.exact_time > 0:
        start = time.perf_counter()
        upper, optimum = exact_optimum(components, k, args.exact_time)
        bound = min(bound, math.floor(upper + 1e-6))
        if optimum is not None:
            oracle, how = optimum, "exact optimum"
        print(f"one MILP with the precision constraint: {'closed' if optimum else 'stopped, dual bound'} "
              f"({time.perf_counter() - start:.0f}s): max band pairs <= {math.floor(upper + 1e-6)}")
    r = measure(oracle)
    print(f"bound: recall 0.70-0.85 <= {bound / n_hard:.4f} ({bound} of {n_hard}; Lagrangian "
          f"{lagrangian_bound}); oracle ({how}): | {cells(r)}")
    return bound / n_hard, lagrangian_bound / n_hard, r, how


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_sample_arguments(parser)
    parser.add_argument("--targets", nargs="*", type=float, default=[0.95, 0.97, 0.99])
    parser.add_argument("--milp-nodes", type=int, default=100, help="larger components get the LP relaxation")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per component solve")
    parser.add_argument("--max-solves", type=int, default=30, help="solves of L(mu) per target at most")
    parser.add_argument("--tolerance", type=float, default=0.5,
                        help="band pairs: stop minimising L, or adding triangles to an LP, when it gains less")
    parser.add_argument("--exact-time", type=float, default=300.0,
                        help="seconds for the one-MILP exact optimum per target (0: skip)")
    args = parser.parse_args()
    started = time.perf_counter()
    options = near_dedup.NearDedupOptions()
    sample, values, offsets, truth = sample_and_truth(args, options.threshold)
    n = sample.num_rows
    components = components_of(n, *truth)
    n_hard = sum(int(c.hard.sum()) for c in components)
    sizes = sorted((c.size for c in components), reverse=True)
    print(f"sample: {n} files; {len(truth[0])} true pairs, {n_hard} in {BAND[0]:.2f}-{BAND[1]:.2f}; "
          f"{len(components)} components of the true-pair graph, largest {sizes[:5]} files")
    measure = Measure(components, n, truth, values, offsets, options.threshold)

    units = near_dedup.file_units(sample.to_pylist(), options)
    units = units.select([c for c in units.column_names if units[c].type != pa.null()])  # keep_order needs types
    units = units.append_column("uid", pa.array(np.arange(units.num_rows)))
    _, kept = near_dedup.recluster(units, options)
    shipped = evaluate(kept, kept != np.arange(len(kept)), truth, values, offsets, options.threshold)

    lagrangian = Lagrangian(components, args)
    summary = [(p, *bound_for(p, lagrangian, measure, n_hard, args)) for p in args.targets]
    print(f"\n### Summary (seed {args.seed}; largest component {sizes[0]} files; solver time "
          f"{sum(c.seconds for c in components):.0f}s, total {time.perf_counter() - started:.0f}s)")
    print(f"| partition | bound on recall 0.70-0.85 (Lagrangian) | {HEADER}\n|---|---|---|---|---|---|")
    for p, bound, lagrangian_bound, r, how in summary:
        print(f"| oracle at precision >= {p} ({how}) | {bound:.4f} ({lagrangian_bound:.4f}) | {cells(r)}")
    print(f"| shipped star_clusters (`recluster`) | | {cells(shipped)}")
    print(f"\n### Frontier: the partitions found that no other beats on both\n| {HEADER}\n" + "|---" * 4 + "|")
    for r in measure.frontier():
        print(f"| {cells(r)}")


if __name__ == "__main__":
    main()
