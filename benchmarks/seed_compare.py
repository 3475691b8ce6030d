"""Did a change move a sweep's results beyond seed noise? Compares the `mean` rows of the summary.csv
files of two sets of multirun sweeps (one per seed), before and after, with an exact two-sided
Mann–Whitney test (all splits of the pooled runs enumerated; ties count one half).

  python benchmarks/seed_compare.py --before runs/old_seed{0..5} --after runs/new_seed{0..4}
"""

from __future__ import annotations

import argparse
import csv
import itertools
import statistics
from pathlib import Path

METRICS = ("image_auroc", "pixel_auroc", "aupro")


def means(sweeps: list[Path]) -> dict[tuple[str, str, str], list[float]]:
    """(stage, map, metric) → the mean-row value of each sweep."""
    values: dict[tuple[str, str, str], list[float]] = {}
    for sweep in sweeps:
        for row in csv.DictReader((sweep / "summary.csv").open()):
            if row["category"] == "mean":
                for metric in METRICS:
                    map_name = row["map"].removesuffix(" (output)")  # marked so since the stage-1 rows
                    values.setdefault((row["stage"], map_name, metric), []).append(float(row[metric]))
    return values


def u_statistic(x: list[float], y: list[float]) -> float:
    return sum((a > b) + 0.5 * (a == b) for a in x for b in y)


def exact_p(after: list[float], before: list[float]) -> tuple[float, float]:
    """(U of after over before, two-sided exact p)."""
    pooled, n, centre = after + before, len(after), len(after) * len(before) / 2
    observed = abs(u_statistic(after, before) - centre)
    extreme = total = 0
    for chosen in itertools.combinations(range(len(pooled)), n):
        rest = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        total += 1
        extreme += abs(u_statistic([pooled[i] for i in chosen], rest) - centre) >= observed - 1e-9
    return u_statistic(after, before), extreme / total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", nargs="+", type=Path, required=True)
    parser.add_argument("--after", nargs="+", type=Path, required=True)
    args = parser.parse_args()
    before, after = means(args.before), means(args.after)
    header = (
        "row (mean of the categories)",
        "metric",
        "before",
        "after",
        "Δ mean",
        "U (after > before)",
        "p",
    )
    print("| " + " | ".join(header) + " |")
    print("|---|---|---|---|---|---|---|")
    for key in [k for k in before if k in after]:  # rows both sides report
        old, new = before[key], after[key]
        u, p = exact_p(new, old)

        def runs(v: list[float]) -> str:
            return (
                ", ".join(f"{x:.1f}" for x in v)
                + f" (mean {statistics.mean(v):.2f}, sd {statistics.stdev(v):.2f})"
            )

        delta = statistics.mean(new) - statistics.mean(old)
        cells = (
            f"{key[0]} {key[1]}",
            key[2],
            runs(old),
            runs(new),
            f"{delta:+.2f}",
            f"{u:g}/{len(new) * len(old)}",
        )
        print("| " + " | ".join(cells) + f" | {p:.3f} |")


if __name__ == "__main__":
    main()
