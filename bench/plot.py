#!/usr/bin/env python3
"""Plots dmoe benchmark JSON lines: one bar chart per benchmark of each case's dmoe/baseline ratio.

Usage: build/release/bench/dmoe_bench_echo > echo.jsonl; bench/plot.py echo.jsonl [more.jsonl] -o ratios.png
Lines with a "ratio" field are plotted, labelled by their "case"; the line 1.0 marks parity. Ratios of times
(dmoe_bench_dht's start time and latencies) say "better": "lower" and are labelled so.
"""
import argparse
import json
import sys


def read_cases(paths):
    cases = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                row = json.loads(line)
                if "ratio" in row and "case" in row:
                    name = row["case"] + (" (lower is better)" if row.get("better") == "lower" else "")
                    cases.setdefault(row.get("bench", "?"), []).append((name, row["ratio"]))
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("-o", "--output", default="bench.png")
    args = parser.parse_args()
    cases = read_cases(args.files)
    if not cases:
        sys.exit("no lines with 'case' and 'ratio' found")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        for bench, rows in cases.items():
            for name, ratio in rows:
                print(f"{bench:8} {name:24} {ratio:6.2f} {'#' * min(int(ratio * 20), 60)}")
        print("(python3-matplotlib is not installed: printed instead of plotted)")
        return
    fig, axes = plt.subplots(len(cases), 1, figsize=(8, 3 * len(cases)), squeeze=False)
    for ax, (bench, rows) in zip(axes[:, 0], cases.items()):
        ax.bar([r[0] for r in rows], [r[1] for r in rows])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_title(bench)
        ax.set_ylabel("dmoe / baseline")
        ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
