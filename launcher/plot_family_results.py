#!/usr/bin/env python3
"""Test accuracy against training FLOPs for each dense/MoE pair, from family_results.sh's CSV.

launcher/family_results.sh writes one CSV row per model x seed (date, recipe, family, model,
role = dense|moe, seed, steps, global_batch, flops_per_image, train_flops = forward FLOPs per
image x steps x global batch, test_accuracy, status, ...). This script draws one panel per family:
every (model, recipe, steps) is a point at its training FLOPs with the mean test accuracy over
its seeds and an error bar of one sample standard deviation (n - 1; none for one seed); the
points of one model are joined in order of FLOPs, dense baseline and MoE model in two colours.
Several CSVs (recipes, step counts, sessions) can be given at once.

  python3 launcher/plot_family_results.py logs/family_results/tiny/runs.csv \
      --out tests/bench/family_accuracy_vs_flops.png
A manual tool (python3-matplotlib), not needed by training.
"""
import argparse
import csv
import math
import os
import statistics
import sys

ROLE_STYLE = {"dense": ("tab:blue", "o"), "moe": ("tab:orange", "s")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", nargs="+", help="CSV files written by launcher/family_results.sh")
    p.add_argument("--out", default=None,
                   help="PNG to write (default: family_accuracy_vs_flops.png beside the first CSV)")
    p.add_argument("--title", default=None, help="figure title")
    return p.parse_args(argv)


def read_runs(paths):
    """Successful runs: dicts with the CSV's columns, numbers converted."""
    runs = []
    for path in paths:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"family", "model", "role", "train_flops", "test_accuracy",
                       "status"} - set(reader.fieldnames or [])
            if missing:
                raise SystemExit("plot_family_results: %s lacks the column(s) %s"
                                 % (path, ", ".join(sorted(missing))))
            for row in reader:
                if row["status"] != "ok":
                    continue
                row["train_flops"] = float(row["train_flops"])
                row["test_accuracy"] = float(row["test_accuracy"])
                runs.append(row)
    return runs


def points(runs):
    """{family: {(role, model): [(flops, mean acc %, sd %, seeds, label), ...] by flops}}."""
    groups = {}
    for r in runs:
        key = (r["family"], r["role"], r["model"], r.get("recipe", ""), r.get("steps", ""))
        groups.setdefault(key, []).append(r)
    out = {}
    for (family, role, model, recipe, steps), rs in groups.items():
        accs = [100.0 * r["test_accuracy"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        flops = statistics.mean(r["train_flops"] for r in rs)
        label = "%s steps, %d seed%s" % (steps or "?", len(rs), "" if len(rs) == 1 else "s")
        out.setdefault(family, {}).setdefault((role, model), []).append(
            (flops, statistics.mean(accs), sd, len(rs), label))
    for fam in out.values():
        for pts in fam.values():
            pts.sort()
    return out


def draw_family(ax, family, series):
    for (role, model), pts in sorted(series.items()):
        colour, marker = ROLE_STYLE.get(role, ("tab:grey", "^"))
        xs = [p[0] for p in pts]
        ax.errorbar(xs, [p[1] for p in pts], yerr=[p[2] for p in pts], color=colour,
                    marker=marker, capsize=4, label="%s (%s)" % (model, role))
        for x, y, _, _, label in pts:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7,
                        color=colour)
    ax.set_xscale("log")
    ax.set_title(family)
    ax.set_xlabel("training FLOPs (forward FLOPs/image x images seen)")
    ax.set_ylabel("test accuracy (%), mean +- sd over seeds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def main(argv=None):
    args = parse_args(argv)
    runs = read_runs(args.csv)
    if not runs:
        print("plot_family_results: no successful run in %s" % ", ".join(args.csv),
              file=sys.stderr)
        return 1
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fams = points(runs)
    cols = min(3, len(fams))
    rows = math.ceil(len(fams) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    for ax, family in zip(axes.flat, sorted(fams)):
        draw_family(ax, family, fams[family])
    for ax in list(axes.flat)[len(fams):]:
        ax.set_visible(False)
    dates = sorted({r.get("date", "") for r in runs} - {""})
    fig.suptitle(args.title or "Fashion-MNIST: test accuracy vs training FLOPs\ndense vs MoE"
                 + (", runs of %s" % ", ".join(dates) if dates else ""), fontsize=11)
    fig.tight_layout()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.csv[0])),
                                   "family_accuracy_vs_flops.png")
    fig.savefig(out, dpi=110)
    print("plot_family_results: %d runs, %d families -> %s" % (len(runs), len(fams), out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
