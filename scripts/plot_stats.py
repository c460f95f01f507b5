#!/usr/bin/env python3
"""Plot learning curves and learner diagnostics from `fleet run` output files.

    python3 scripts/plot_stats.py curves OUT.png RUN.progress [...] [--target 475]
    python3 scripts/plot_stats.py diagnostics OUT.png STATS.jsonl [--from S] [--to S]
    python3 scripts/plot_stats.py lag OUT.png STATS.jsonl [STATS.jsonl ...]

Progress logs are the stdout of `fleet run` (one line per progress interval,
either the current "return X (step-weighted) Y (last 100 of N episodes)" form
or the older "mean return (last 100 episodes) Y" form). Stats files are the
JSON lines written through learner.stats_file, one object per learner update.
Long stats files are reduced to at most 3000 points per series: the mean
of each bin, or its max (min) for *_max (*_min) fields.
"""

import argparse
import json
import math
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import EngFormatter, LogFormatter  # noqa: E402
import numpy as np  # noqa: E402

MAX_POINTS = 3000
PROGRESS_LINE = re.compile(r"^\[\s*(\d+)s\] env steps\s+(\d+)\s+\d+ steps/s\s+(.*?)\s+learner updates")
NEW_RETURNS = re.compile(r"return\s+(\S+) \(step-weighted\)\s+(\S+) \(last")
OLD_RETURN = re.compile(r"mean return \(last \d+ episodes\)\s+(\S+)")
DIAGNOSTIC_FIELDS = [
    "seconds", "entropy", "logit_gap_mean", "logit_gap_max", "rho_mean", "rho_max",
    "grad_norm", "relative_step", "value_mean", "target_mean", "age_min", "age_mean", "age_max",
]


def stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def to_float(text):
    return math.nan if text == "n/a" else float(text)


def read_progress(path):
    """Return arrays seconds, steps, step_weighted, episode_mean (NaN where absent)."""
    rows = []
    with open(path) as f:
        for line in f:
            m = PROGRESS_LINE.match(line)
            if not m:
                continue
            new, old = NEW_RETURNS.search(m.group(3)), OLD_RETURN.search(m.group(3))
            if new:
                returns = (to_float(new.group(1)), to_float(new.group(2)))
            elif old:
                returns = (math.nan, to_float(old.group(1)))
            else:
                continue
            rows.append((float(m.group(1)), float(m.group(2))) + returns)
    return np.array(rows, dtype=float).reshape(-1, 4).T


def read_stats(path, fields, t_from=-math.inf, t_to=math.inf, per_actor=False):
    """Read the named fields of each update with t_from <= seconds <= t_to.

    Returns {field: array}; with per_actor, also {"actor <id>": array} from
    age_by_actor (NaN for updates that do not mention that actor). A truncated
    last line (a file still being written) is skipped."""
    columns = {name: [] for name in fields}
    actors = {}
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not t_from <= record["seconds"] <= t_to:
                continue
            for name in fields:
                columns[name].append(record[name])
            if per_actor:
                row = len(columns["seconds"]) - 1
                for actor, age in record.get("age_by_actor", {}).items():
                    actors.setdefault("actor " + actor, {})[row] = age
    result = {name: np.array(values, dtype=float) for name, values in columns.items()}
    count = len(result[fields[0]])
    for name, ages in sorted(actors.items(), key=lambda item: int(item[0].split()[1])):
        series = np.full(count, math.nan)
        series[list(ages)] = list(ages.values())
        result[name] = series
    return result


def downsample(columns, max_points=MAX_POINTS):
    """Bin consecutive updates so that each series has at most max_points values."""
    count = len(columns["seconds"])
    size = max(1, math.ceil(count / max_points))
    starts = np.arange(0, count, size)
    binned = {}
    for name, values in columns.items():
        if name.endswith("_max"):
            binned[name] = np.maximum.reduceat(values, starts)
        elif name.endswith("_min"):
            binned[name] = np.minimum.reduceat(values, starts)
        else:
            present = ~np.isnan(values)
            sums = np.add.reduceat(np.where(present, values, 0.0), starts)
            counts = np.add.reduceat(present.astype(float), starts)
            with np.errstate(invalid="ignore"):
                binned[name] = sums / counts
    return binned, size


def run_group(path, label_from_name):
    """Legend label for a run: the file stem, or with --label-from-name the stem minus a trailing -<seed>."""
    return re.sub(r"-\d+$", "", stem(path)) if label_from_name else stem(path)


def plot_curves(args):
    fig, ax = plt.subplots(figsize=(11, 6))
    groups = list(dict.fromkeys(run_group(p, args.label_from_name) for p in args.files))
    colours = {g: plt.cm.tab10(i % 10) if len(groups) <= 10 else plt.cm.tab20(i % 20) for i, g in enumerate(groups)}
    labelled, any_weighted = set(), False
    for path in args.files:
        seconds, steps, weighted, episode = read_progress(path)
        x = steps if args.x == "steps" else seconds
        group = run_group(path, args.label_from_name)
        label = None if group in labelled else group
        labelled.add(group)
        if np.any(~np.isnan(weighted)):
            any_weighted = True
            ax.plot(x, weighted, color=colours[group], lw=1.8, label=label)
            ax.plot(x, episode, color=colours[group], lw=0.9, ls="--", alpha=0.7)
        else:
            ax.plot(x, episode, color=colours[group], lw=0.9, ls="--", label=label)
    if args.target is not None:
        ax.axhline(args.target, color="black", lw=1, ls=":", label=f"target {args.target:g}")
    if args.x == "steps":
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlabel("env steps" if args.x == "steps" else "wall-clock seconds")
    ax.set_ylabel("return")
    ax.set_title(args.title or "Return per run")
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if any_weighted:
        handles.append(Line2D([], [], color="gray", lw=1.8, label="step-weighted return"))
    handles.append(Line2D([], [], color="gray", lw=0.9, ls="--", label="mean of last 100 episodes"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    save(fig, args.out)


def plot_diagnostics(args):
    columns = read_stats(args.file, DIAGNOSTIC_FIELDS, args.t_from, args.t_to, per_actor=True)
    if len(columns["seconds"]) == 0:
        raise SystemExit(f"{args.file}: no updates in the requested time window")
    data, size = downsample(columns)
    t = data["seconds"]
    panels = [
        ("entropy", [("entropy", "entropy")], False),
        ("logit gap", [("logit_gap_mean", "mean"), ("logit_gap_max", "max")], False),
        ("importance ratio rho", [("rho_mean", "mean"), ("rho_max", "max")], True),
        ("grad norm", [("grad_norm", "grad norm")], True),
        ("relative step", [("relative_step", "|step| / |weights|")], True),
        ("value", [("value_mean", "value mean"), ("target_mean", "target mean")], False),
    ]
    fig, axes = plt.subplots(len(panels) + 1, 1, figsize=(11, 2.2 * (len(panels) + 1)), sharex=True)
    for ax, (ylabel, series, log) in zip(axes, panels):
        for name, label in series:
            ax.plot(t, data[name], lw=0.8, label=label)
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(LogFormatter())
            ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
        ax.set_ylabel(ylabel)
        if len(series) > 1:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    plot_ages(axes[-1], t, data)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("learner seconds")
    per_bin = f", mean of {size} updates per point (max/min for *_max/*_min)" if size > 1 else ""
    fig.suptitle(f"{stem(args.file)}: {len(columns['seconds'])} updates{per_bin}")
    save(fig, args.out)


def plot_ages(ax, t, data):
    """Sequence age band (min-max), overall mean, and each actor's mean over the updates it contributed to."""
    ax.fill_between(t, data["age_min"], data["age_max"], color="lightgray", lw=0, label="min-max")
    ax.plot(t, data["age_mean"], color="black", lw=0.6, label="mean")
    actor_names = [name for name in data if name.startswith("actor ")]
    for i, name in enumerate(actor_names):
        present = ~np.isnan(data[name])
        ax.plot(t[present], data[name][present], lw=0.7, alpha=0.8, color=plt.cm.tab10(i % 10), label=f"{name} mean")
    ax.set_ylabel("sequence age\n(versions)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def plot_lag(args):
    runs = [(stem(p), read_stats(p, ["age_mean", "age_max"])) for p in args.files]
    print(f"{'run':<20} {'updates':>8} {'median':>8} {'p90':>8} {'p99':>8} {'max':>8} {'mean age_max':>13}")
    for name, columns in runs:
        mean_age = columns["age_mean"]
        median, p90, p99 = np.percentile(mean_age, [50, 90, 99])
        print(f"{name:<20} {len(mean_age):>8} {median:>8.2f} {p90:>8.2f} {p99:>8.2f} {mean_age.max():>8.2f} "
              f"{columns['age_max'].mean():>13.2f}")
    fig, ax = plt.subplots(figsize=(max(6, 1.0 * len(runs) + 3), 5))
    ax.boxplot([columns["age_mean"] for _, columns in runs], whis=(1, 99), widths=0.6,
               flierprops={"marker": ".", "markersize": 2, "alpha": 0.3})
    ax.set_xticks(range(1, len(runs) + 1), [name for name, _ in runs], rotation=30, ha="right")
    ax.set_ylabel("mean sequence age per update (versions)")
    ax.set_title("Policy lag seen by the learner (box: quartiles, whiskers: p1-p99)")
    ax.grid(alpha=0.3, axis="y")
    save(fig, args.out)


def save(fig, out):
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    curves = commands.add_parser("curves", help="return vs env steps (or seconds) from progress logs")
    curves.add_argument("out")
    curves.add_argument("files", nargs="+", metavar="RUN.progress")
    curves.add_argument("--label-from-name", action="store_true",
                        help="drop a trailing -<seed> from file stems, so runs of one configuration share a colour and label")
    curves.add_argument("--title")
    curves.add_argument("--x", choices=["steps", "seconds"], default="steps")
    curves.add_argument("--target", type=float, help="draw a horizontal line at this return")
    curves.set_defaults(func=plot_curves)
    diagnostics = commands.add_parser("diagnostics", help="multi-panel learner diagnostics from one stats file")
    diagnostics.add_argument("out")
    diagnostics.add_argument("file", metavar="STATS.jsonl")
    diagnostics.add_argument("--from", dest="t_from", type=float, default=-math.inf, metavar="SECONDS")
    diagnostics.add_argument("--to", dest="t_to", type=float, default=math.inf, metavar="SECONDS")
    diagnostics.set_defaults(func=plot_diagnostics)
    lag = commands.add_parser("lag", help="distribution of per-update mean sequence age, one box per stats file")
    lag.add_argument("out")
    lag.add_argument("files", nargs="+", metavar="STATS.jsonl")
    lag.set_defaults(func=plot_lag)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
