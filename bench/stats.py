#!/usr/bin/env python3
"""The one percentile helper of the bench scripts.

    bench/stats.py [--unit ms|us] [--scale X] [--base NAME] [--target TEXT] FILE...

Each FILE holds one sample per line (seconds, times --scale). Prints n, p50 (median) and
p99 per file (named by its base name), and, with --base, the ratio of every other file's
p50 and p99 to the base file's (compare as ratios measured in one run).
"""
import argparse
import os
import statistics
import sys


def pct(v, q):
    """Nearest-rank percentile of sorted v."""
    return v[min(len(v) - 1, round(q * (len(v) - 1)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--unit", choices=["ms", "us"], default="ms")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply samples by this to get seconds")
    ap.add_argument("--base")
    ap.add_argument("--target", default="")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    mul = (1000.0 if a.unit == "ms" else 1_000_000.0) * a.scale
    res = {}
    for path in a.files:
        v = sorted(float(x) for x in open(path) if x.strip())
        if not v:
            sys.exit(f"{path}: no samples")
        res[os.path.basename(path)] = (statistics.median(v), pct(v, 0.99), len(v))
    for k, (p50, p99, n) in res.items():
        print(f"{k:22s} n={n}  p50 {p50 * mul:8.0f} {a.unit}  p99 {p99 * mul:8.0f} {a.unit}")
    if a.base:
        b = res.get(a.base)
        if not b:
            sys.exit(f"--base {a.base}: no such file among {list(res)}")
        for k, (p50, p99, _) in res.items():
            if k != a.base:
                print(f"ratio {k} / {a.base}: p50 {p50 / b[0]:.2f}x  p99 {p99 / b[1]:.2f}x {a.target}".rstrip())


if __name__ == "__main__":
    main()
