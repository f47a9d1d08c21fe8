#!/usr/bin/env python3
"""Plots of moe_comm_bench CSVs (launcher/comm_sweep_csv.h): a manual tool, not part of the CI.

  python3 launcher/plot_comm_sweep.py sweep.csv [more.csv ...] --out_dir=DIR [--prefix=NAME]

Writes DIR/PREFIX_time_vs_bytes.png (time per exchange against bytes per rank, log-log, one
series per dispatcher and layout; solid: the whole exchange, dashed: its transfer part, where
the CSV has the skew/transfer split) and DIR/PREFIX_share_vs_ep.png (the exchanges' share of the
layer's forward+backward against the EP size, one series per dispatcher, layout, D and tokens).
Needs matplotlib (Debian: apt-get install python3-matplotlib).
"""
import argparse
import collections
import csv
import os
import sys

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("plot_comm_sweep.py needs matplotlib: apt-get install python3-matplotlib")


MARKERS = "osD^v<>p"


def read_rows(paths):
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                try:
                    row["bytes"] = int(row["bytes"])
                    row["exchange_us"] = float(row["exchange_us"])
                    row["share"] = float(row["share"])
                    row["ep"] = int(row["ep"])
                    # Optional (CSVs from before the split lack it): None = not measured.
                    t = row.get("transfer_us")
                    row["transfer_us"] = float(t) if t not in (None, "") and float(t) >= 0 else None
                except (KeyError, ValueError) as e:
                    sys.exit(f"{path}:{line}: {e}")
                row["layout"] = f"{row['nodes']}x{row['ranks_per_node']}"
                rows.append(row)
    if not rows:
        sys.exit("no rows in " + ", ".join(paths))
    return rows


def plot_time_vs_bytes(rows, path):
    series = collections.defaultdict(list)
    for r in rows:
        key = (r["dispatcher"], r["layout"], r["ep"], int(r["dim"]))
        series[key].append((r["bytes"], r["exchange_us"], r["transfer_us"]))
    fig, ax = plt.subplots(figsize=(10, 5))
    for (disp, layout, ep, dim), pts in sorted(series.items()):
        pts.sort()
        marker = MARKERS[ep % len(MARKERS)]
        line, = ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker + "-",
                          label=f"{disp}, nodes x rpn {layout}, ep {ep}, D={dim}")
        if all(p[2] is not None for p in pts):
            ax.loglog([p[0] for p in pts], [p[2] for p in pts], marker + "--", alpha=0.6,
                      color=line.get_color(), label="  its transfer part")
    ax.set_xlabel("bytes sent by one rank per exchange")
    ax.set_ylabel("time per exchange (us)")
    ax.set_title("MoE all-to-all: time against bytes (dashed: transfer, the wait left out)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_share_vs_ep(rows, path):
    series = collections.defaultdict(list)
    for r in rows:
        key = (r["dispatcher"], r["layout"], int(r["dim"]), int(r["tokens"]))
        series[key].append((r["ep"], 100 * r["share"]))
    fig, ax = plt.subplots(figsize=(10, 5))
    for i, ((disp, layout, dim, tokens), pts) in enumerate(sorted(series.items())):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], MARKERS[i % len(MARKERS)] + "-",
                label=f"{disp}, {layout}, D={dim}, tokens={tokens}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("EP size")
    ax.set_ylabel("all-to-all share of the layer's forward+backward (%)")
    ax.set_title("MoE all-to-all: share of the layer's time against EP")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv", nargs="+")
    p.add_argument("--out_dir", default=".")
    p.add_argument("--prefix", default="comm_sweep")
    a = p.parse_args()
    rows = read_rows(a.csv)
    os.makedirs(a.out_dir, exist_ok=True)
    for name, fn in (("time_vs_bytes", plot_time_vs_bytes), ("share_vs_ep", plot_share_vs_ep)):
        out = os.path.join(a.out_dir, f"{a.prefix}_{name}.png")
        fn(rows, out)
        print(out)


if __name__ == "__main__":
    main()
