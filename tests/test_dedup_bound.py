"""`bench/dedup_bound.py`: its bound on recall at a precision goal is never below the best partition
(brute force over every partition of small true-pair graphs), and its exact optimum is that partition."""

import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from dedup_bound import Lagrangian, best_combination, components_of, exact_optimum, total  # noqa: E402


def partitions(items: list[int]):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in partitions(rest):
        yield [[first], *part]
        for i in range(len(part)):
            yield [*part[:i], [first, *part[i]], *part[i + 1:]]


def brute_force(n: int, jac: dict[tuple[int, int], float], p: float) -> int:
    """Most band pairs (0.70 <= J < 0.85) inside clusters of any partition with precision >= p."""
    best = 0
    for part in partitions(list(range(n))):
        pairs = [(a, b) for cluster in part for a in cluster for b in cluster if a < b]
        good = sum(jac.get(q, 0) >= 0.7 for q in pairs)
        if pairs and good < p * len(pairs):
            continue
        best = max(best, sum(0.7 <= jac.get(q, 0) < 0.85 for q in pairs))
    return best


def bounds(n: int, jac: dict[tuple[int, int], float], p: float, milp_nodes: int) -> tuple[int, int, int]:
    """(Lagrangian bound, exact optimum, best combination found) in band pairs."""
    true = sorted(q for q, j in jac.items() if j >= 0.7)
    a, b = (np.array(x, np.int64) for x in zip(*true, strict=True))
    components = components_of(n, a, b, np.array([jac[q] for q in true]))
    k = p / (1 - p)
    settings = SimpleNamespace(time_limit=30, milp_nodes=milp_nodes, max_solves=30, tolerance=1e-6)
    evaluations = Lagrangian(components, settings)(k)
    bound = math.floor(min(e.upper for e in evaluations) + 1e-6)
    upper, optimum = exact_optimum(components, k, time_limit=30)
    assert math.floor(upper + 1e-6) == total(components, optimum).hard
    combination = total(components, best_combination(components, k))
    assert combination.good >= p * (combination.good + combination.bad)
    return bound, total(components, optimum).hard, combination.hard


def test_chain_is_split_at_high_precision():
    """A~B~C with A !~ C: one cluster has precision 2/3, so at 0.99 one band pair is the most."""
    jac = {(0, 1): 0.75, (1, 2): 0.75}
    assert brute_force(3, jac, 0.99) == 1
    assert bounds(3, jac, 0.99, milp_nodes=10) == (1, 1, 1)
    assert brute_force(3, jac, 0.6) == 2
    assert bounds(3, jac, 0.6, milp_nodes=10) == (2, 2, 2)


@pytest.mark.parametrize("seed", range(6))
def test_bound_is_never_below_the_best_partition(seed):
    rng = np.random.default_rng(seed)
    n = 7
    jac = {(a, b): float(rng.choice([0.5, 0.75, 0.8, 0.9])) for a in range(n) for b in range(a + 1, n)
           if rng.random() < 0.6}
    for p in (0.8, 0.9, 0.99):
        best = brute_force(n, jac, p)
        for milp_nodes in (10, 0):  # exact MILP per component, then the LP relaxation for all
            bound, optimum, found = bounds(n, jac, p, milp_nodes)
            assert bound >= best == optimum >= found, (p, milp_nodes, bound, best, found)
