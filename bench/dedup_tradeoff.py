"""near_dedup's clustering trade-off: recall vs cluster precision as the star rule's agreement varies.

    .venv/bin/python bench/dedup_tradeoff.py CORPUS_DIR [--sample 5000] [--seed 0] [--exclude-repos REGEX]
                                             [--drop-generated | --as-shipped CONFIG]
                                             [--rules 0.5:32 0.6:32 0.75:32 0.99:32]

The same uniform sample as `dedup_accuracy.py` (same arguments, same ground truth). Each rule
`AGREEMENT:CORE` is `star_clusters(agreement=AGREEMENT, core=CORE)` inside `recluster`, which runs the
stage's candidate pairs, verification, components and clusters in process on the sample's units (with
the shipped rule it gives the figures of a `pipeline run`).
"""

import argparse
import functools
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dedup_accuracy import add_sample_arguments, evaluate, sample_and_truth  # noqa: E402

import stages.near_dedup as near_dedup  # noqa: E402
from stages.lsh import star_clusters  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_sample_arguments(parser)
    parser.add_argument("--rules", nargs="*", default=["0.5:32", "0.5:8", "0.6:32", "0.67:32", "0.75:32", "0.99:32"])
    args = parser.parse_args()
    options = near_dedup.NearDedupOptions()
    sample, values, offsets, truth = sample_and_truth(args, options.threshold)
    units = near_dedup.file_units(sample.to_pylist(), options)
    units = units.select([c for c in units.column_names if units[c].type != pa.null()])  # keep_order needs types
    units = units.append_column("uid", pa.array(np.arange(units.num_rows)))
    print("| agreement, core | recall 0.70-0.85 | cluster precision | wrongly removed |")
    print("|---|---|---|---|")
    for rule in args.rules:
        agreement, core = float(rule.split(":")[0]), int(rule.split(":")[1])
        near_dedup.star_clusters = functools.partial(star_clusters, agreement=agreement, core=core)
        _, kept = near_dedup.recluster(units, options)
        removed = kept != np.arange(len(kept))
        r = evaluate(kept, removed, truth, values, offsets, options.threshold)
        recall, precision, wrong = r["recall 0.70-0.85"], r["cluster precision"], r["wrongly removed"]
        print(f"| > {agreement}, {core} | {recall[0]:.3f} ({recall[1]}) | {precision[0]:.3f} ({precision[1]} pairs) "
              f"| {wrong[0]} of {wrong[1]} |", flush=True)


if __name__ == "__main__":
    main()
