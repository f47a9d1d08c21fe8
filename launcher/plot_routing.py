#!/usr/bin/env python3
"""Readable routing heatmaps from a moe_train metrics file (--metrics_out=FILE.jsonl).

At the end of a run moe_train writes one `routing_matrix` object per MoE layer
(launcher/routing_analytics.cc, RoutingMatrixJson), counted over the final evaluation:
  {"routing_matrix": {"layer": NAME, "rows_per_image": R, "counts": [[...] per expert],
                      "image_counts": [[...] per expert], "class_images": [... per class]}}
counts[e][c]: rows (tokens, patches) of class c kept by expert e; image_counts[e][c]: images of
class c with at least one row at expert e; class_images[c]: images of class c evaluated.

This script draws one PNG per layer with matplotlib: experts down, classes across (Fashion-MNIST
names when there are 10 classes, indices otherwise), the value written in every cell, a title
naming the model (the metrics file's `summary` object, or --model) and the layer, and a labelled
colour bar. Values (--values):
  rows    (default) % of the class's rows kept by the expert, as moe_train's `routing matrix`
          table: a column sums to k x 100% (top-k token rules) less what capacity dropped
  images  % of the class's images that sent at least one row to the expert

  python3 launcher/plot_routing.py run/metrics.jsonl --out_dir run/routing_plots
A manual tool (python3-matplotlib), not needed by training.
"""
import argparse
import json
import os
import re
import sys

FASHION_MNIST = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("metrics", help="metrics JSONL written by moe_train --metrics_out")
    p.add_argument("--out_dir", default=None,
                   help="folder for the PNGs (default: the metrics file's folder)")
    p.add_argument("--values", choices=["rows", "images"], default="rows")
    p.add_argument("--model", default=None,
                   help="name in the titles (default: the summary's model, else the file name)")
    p.add_argument("--class_names", default=None,
                   help="comma-separated class names (default: Fashion-MNIST for 10 classes)")
    return p.parse_args(argv)


def read_metrics(path):
    """(routing matrices, summary or None) from a metrics JSONL file."""
    matrices, summary = [], None
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise SystemExit("plot_routing: %s:%d: not JSON (%s)" % (path, n, e))
            if "routing_matrix" in obj:
                matrices.append(obj["routing_matrix"])
            elif "summary" in obj:
                summary = obj["summary"]
    return matrices, summary


def percent_table(m, values):
    """[experts][classes] percentages, and the per-class denominators used."""
    class_images = m["class_images"]
    if values == "rows":
        counts, per = m["counts"], [n * m["rows_per_image"] for n in class_images]
    else:
        counts, per = m["image_counts"], list(class_images)
    return [[100.0 * row[c] / per[c] if per[c] > 0 else 0.0 for c in range(len(per))]
            for row in counts]


def class_labels(num_classes, names):
    if names:
        labels = [s.strip() for s in names.split(",")]
        if len(labels) != num_classes:
            raise SystemExit("plot_routing: --class_names has %d names, the matrix %d classes"
                             % (len(labels), num_classes))
        return labels
    return FASHION_MNIST if num_classes == 10 else [str(c) for c in range(num_classes)]


def plot_layer(plt, m, model, args, out_path):
    table = percent_table(m, args.values)
    experts, classes = len(table), len(table[0]) if table else 0
    images = int(sum(m["class_images"]))
    fig, ax = plt.subplots(figsize=(1.0 + 0.85 * classes, 1.6 + 0.5 * experts))
    im = ax.imshow(table, cmap="viridis", aspect="auto", vmin=0.0)
    top = max((v for row in table for v in row), default=0.0)
    for e in range(experts):
        for c in range(classes):
            v = table[e][c]
            ax.text(c, e, "%.0f" % v if v >= 10 else "%.1f" % v, ha="center", va="center",
                    fontsize=8, color="black" if v > 0.6 * top else "white")
    ax.set_xticks(range(classes))
    ax.set_xticklabels(class_labels(classes, args.class_names), rotation=35, ha="right")
    ax.set_yticks(range(experts))
    ax.set_yticklabels(["expert %d" % e for e in range(experts)])
    ax.set_xlabel("class (test images)")
    what = ("% of the class's rows kept by each expert" if args.values == "rows"
            else "% of the class's images sending a row to each expert")
    ax.set_title("%s, layer %s\n%s (final evaluation, %d images x %d rows)"
                 % (model, m["layer"], what, images, m["rows_per_image"]), fontsize=10)
    bar = fig.colorbar(im, ax=ax)
    bar.set_label("% of the class's " + args.values)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    matrices, summary = read_metrics(args.metrics)
    if not matrices:
        print("plot_routing: %s has no routing_matrix object (a dense model, or a run without "
              "MoE analytics)" % args.metrics, file=sys.stderr)
        return 1
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    model = args.model or (summary or {}).get("model") or os.path.basename(args.metrics)
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.metrics))
    os.makedirs(out_dir, exist_ok=True)
    for m in matrices:
        name = re.sub(r"[^A-Za-z0-9_-]", "_", m["layer"])
        path = os.path.join(out_dir, "routing_%s_%s.png" % (name, args.values))
        plot_layer(plt, m, model, args, path)
        print("plot_routing: %s -> %s" % (m["layer"], path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
