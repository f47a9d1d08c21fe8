#!/usr/bin/env python3
"""Test accuracy against training FLOPs for each dense/MoE pair, from family_results.sh's CSV.

launcher/family_results.sh writes one CSV row per model x seed (date, recipe, family, model,
role = dense|moe, seed, steps, global_batch, flops_per_image, train_flops = forward FLOPs per
image x steps x global batch, test_accuracy, status, ...). This script draws one panel per family:
every (model, recipe, steps) is a point at its training FLOPs with the mean test accuracy over
its seeds and an error bar of one sample standard deviation (n - 1; none for one seed); the
points of one model are joined in order of FLOPs, dense baseline and MoE model in two colours.
Several CSVs (recipes, step counts, sessions) can be given at once.
With --curves, each model's test accuracy after every epoch (the eval_accuracy records with an
"epoch" in RUN_DIR/metrics.jsonl, written by recipe.eval_every_epoch) is drawn too, at the
training FLOPs spent by then (forward FLOPs/image x step x global batch): the mean over the
model's seeds, with a band of one standard deviation where there are several.

  python3 launcher/plot_family_results.py logs/family_results/tiny/runs.csv \
      --out tests/bench/family_accuracy_vs_flops.png
  python3 launcher/plot_family_results.py logs/family_results/full/runs.csv --curves \
      --out tests/bench/family_full_accuracy_vs_flops.png
A manual tool (python3-matplotlib), not needed by training.
"""
import argparse
import csv
import json
import math
import os
import statistics
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROLE_STYLE = {"dense": ("tab:blue", "o"), "moe": ("tab:orange", "s")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", nargs="+", help="CSV files written by launcher/family_results.sh")
    p.add_argument("--out", default=None,
                   help="PNG to write (default: family_accuracy_vs_flops.png beside the first CSV)")
    p.add_argument("--title", default=None, help="figure title")
    p.add_argument("--curves", action="store_true",
                   help="also draw each run's per-epoch test accuracy (RUN_DIR/metrics.jsonl)")
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


def epoch_records(run):
    """[(train FLOPs, accuracy %)] after each epoch of one run, from its metrics file."""
    path = os.path.join(run.get("run_dir", ""), "metrics.jsonl")
    # family_results.sh writes run dirs inside the repository relative to its root (the archive
    # in tests/bench/family_runs), so the committed CSV works from any checkout and directory
    if not os.path.isabs(path) and not os.path.exists(path):
        path = os.path.join(REPO_ROOT, path)
    try:
        per_step = float(run["flops_per_image"]) * float(run["global_batch"])
    except (KeyError, ValueError):
        return []
    out = []
    try:
        with open(path) as f:
            for line in f:
                if '"epoch"' not in line or '"eval_accuracy"' not in line:
                    continue
                rec = json.loads(line)
                out.append((per_step * rec["step"], 100.0 * rec["eval_accuracy"]))
    except OSError:
        return []
    return out


def curves(runs):
    """{family: {(role, model): [(flops, mean acc %, sd %)] per epoch}}, seeds averaged epoch by
    epoch (over the seeds that reached it)."""
    groups = {}
    for r in runs:
        recs = epoch_records(r)
        if recs:
            groups.setdefault((r["family"], r["role"], r["model"]), []).append(recs)
    out = {}
    for (family, role, model), seeds in groups.items():
        pts = []
        for e in range(max(len(s) for s in seeds)):
            at = [s[e] for s in seeds if e < len(s)]
            accs = [a for _, a in at]
            pts.append((statistics.mean(f for f, _ in at), statistics.mean(accs),
                        statistics.stdev(accs) if len(accs) > 1 else 0.0))
        out.setdefault(family, {})[(role, model)] = pts
    return out


def draw_curves(ax, series):
    for (role, model), pts in sorted(series.items()):
        colour, _ = ROLE_STYLE.get(role, ("tab:grey", "^"))
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        ax.plot(xs, ys, color=colour, alpha=0.6, linewidth=1.2,
                label="%s per epoch" % model)
        if any(p[2] > 0 for p in pts):
            ax.fill_between(xs, [y - p[2] for y, p in zip(ys, pts)],
                            [y + p[2] for y, p in zip(ys, pts)], color=colour, alpha=0.15)


def draw_family(ax, family, series, epoch_series=None):
    if epoch_series:
        draw_curves(ax, epoch_series)
    for (role, model), pts in sorted(series.items()):
        colour, marker = ROLE_STYLE.get(role, ("tab:grey", "^"))
        xs = [p[0] for p in pts]
        ax.errorbar(xs, [p[1] for p in pts], yerr=[p[2] for p in pts], color=colour,
                    marker=marker, capsize=4, label="%s (%s)" % (model, role))
        for x, y, _, _, label in pts:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7,
                        color=colour)
    ax.set_xscale("log")
    if epoch_series:  # the first epochs sit far below: keep the final points readable
        finals = [p[1] for pts in series.values() for p in pts]
        ax.set_ylim(bottom=min(finals) - 5)
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
    per_epoch = curves(runs) if args.curves else {}
    cols = min(3, len(fams))
    rows = math.ceil(len(fams) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    for ax, family in zip(axes.flat, sorted(fams)):
        draw_family(ax, family, fams[family], per_epoch.get(family))
    for ax in list(axes.flat)[len(fams):]:
        ax.set_visible(False)
    dates = sorted({r.get("date", "") for r in runs} - {""})
    fig.suptitle(args.title or "Fashion-MNIST: test accuracy vs training FLOPs\ndense vs MoE"
                 + (", runs of %s" % ", ".join(dates) if dates else ""), fontsize=11)
    fig.tight_layout()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.csv[0])),
                                   "family_accuracy_vs_flops.png")
    fig.savefig(out, dpi=110)
    n_curves = sum(len(c) for c in per_epoch.values())
    print("plot_family_results: %d runs, %d families%s -> %s"
          % (len(runs), len(fams), ", %d per-epoch curves" % n_curves if args.curves else "", out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
