"""Figures of the fractal study from the database: spider charts per category group and layer ablations.

Figures are drawn on matplotlib `Figure` objects without pyplot, so no GUI backend is needed,
and each is written as PNG (150 dpi) and PDF.
"""

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench.errors import ConfigError
from bench.reports.groups import assign_groups
from bench.reports.tables import (METHOD_ORDER, METRIC_LABELS, STUDY_METRICS, ResultTable, check_axes, source_names,
                                  source_rank)

logger = logging.getLogger(__name__)

PNG_DPI = 150
# The study's layer ablation: hierarchy levels j of PatchCore and PaDiM.
LAYER_SETS = ("1,2", "2,3", "3,4", "1,2,3")
LAYER_METHODS = ("patchcore", "padim")
# Fixed colours, so a weights source looks the same in every figure.
SOURCE_COLOURS = {"imagenet": "#1f77b4", "fractals": "#d62728", "random": "#7f7f7f"}
EXTRA_COLOURS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#ff7f0e")


def source_colour(source: str, sources: list[str]) -> str:
    """Return the colour of a source: fixed for imagenet, fractals and random, else by position."""
    weights = source.split(":")[0]
    if weights in SOURCE_COLOURS and sum(other.split(":")[0] == weights for other in sources) == 1:
        return SOURCE_COLOURS[weights]
    return EXTRA_COLOURS[sources.index(source) % len(EXTRA_COLOURS)]


def save_figure(figure: Figure, out: Path) -> list[Path]:
    """Write `figure` as `<out>.png` and `<out>.pdf` (a .png or .pdf suffix of `out` is dropped)."""
    out = Path(out)
    if out.suffix.lower() in (".png", ".pdf"):
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_name(out.name + ".png"), out.with_name(out.name + ".pdf")]
    figure.savefig(paths[0], dpi=PNG_DPI, bbox_inches="tight")
    figure.savefig(paths[1], bbox_inches="tight")
    for path in paths:
        logger.info("wrote %s (%d bytes)", path, path.stat().st_size)
    return paths


def dataset_roots(frame: pd.DataFrame) -> dict[str, Path | None]:
    """Map each dataset of a runs frame to its root when all its runs share one, for settings-file groups."""
    roots = {}
    for dataset, group in frame.groupby("dataset"):
        distinct = group["root"].dropna().unique()
        roots[dataset] = Path(distinct[0]) if len(distinct) == 1 else None
    return roots


def group_means(tables: list[ResultTable], roots: dict[str, Path | None] | None = None) -> pd.DataFrame:
    """Average the per-category values of each table over its category groups.

    Returns one row per dataset, group, method and source with `value` (fraction, mean over the
    group's categories with a defined value), `n` (categories averaged) and `size` (categories
    of the group in the table).
    """
    rows = []
    for table in tables:
        root = (roots or {}).get(table.dataset)
        for group, members in assign_groups(table.dataset, table.categories, root).items():
            for method in table.methods:
                for source in table.sources:
                    values = [table.cells[(category, method)].values[source][0] for category in members
                              if (category, method) in table.cells
                              and source in table.cells[(category, method)].values
                              and table.cells[(category, method)].values[source][0] is not None]
                    rows.append({"dataset": table.dataset, "group": group, "method": method, "source": source,
                                 "value": float(np.mean(values)) if values else math.nan, "n": len(values),
                                 "size": len(members)})
    return pd.DataFrame(rows, columns=["dataset", "group", "method", "source", "value", "n", "size"])


def spider_figure(tables: list[ResultTable], out: Path, roots: dict[str, Path | None] | None = None) -> list[Path]:
    """Draw one spider chart per weights source: methods as spokes, one polygon per category group.

    The radius is the mean image AUROC (%) of the group's categories; every chart shares one
    radial scale so sources compare at a glance.
    """
    means = group_means(tables, roots)
    if means.empty or means["value"].isna().all():
        raise ConfigError("no image AUROC values to draw a spider chart; run methods on a dataset first")

    methods = [method for method in METHOD_ORDER if method in set(means["method"])]
    methods += sorted(set(means["method"]) - set(methods))
    sources = sorted(means["source"].unique(), key=source_rank)
    lines = list(means[["dataset", "group"]].drop_duplicates().itertuples(index=False, name=None))
    low = max(0.0, math.floor((100 * means["value"].min() - 5) / 10) * 10)

    angles = np.linspace(0, 2 * np.pi, len(methods), endpoint=False)
    figure = Figure(figsize=(4.6 * len(sources), 5.2))
    colours = [f"C{index}" for index in range(len(lines))]
    for position, source in enumerate(sources):
        axes = figure.add_subplot(1, len(sources), position + 1, projection="polar")
        for (dataset, group), colour in zip(lines, colours):
            selected = means[(means["dataset"] == dataset) & (means["group"] == group) & (means["source"] == source)]
            by_method = dict(zip(selected["method"], 100 * selected["value"]))
            values = np.array([by_method.get(method, np.nan) for method in methods])
            size = int(selected["size"].max()) if len(selected) else 0
            label = f"{dataset} {group} ({size} {'category' if size == 1 else 'categories'})"
            axes.plot(np.append(angles, angles[0]), np.append(values, values[0]), color=colour, linewidth=1.6,
                      marker="o", markersize=3, label=label)
            axes.fill(angles, np.nan_to_num(values, nan=low), color=colour, alpha=0.08)
        axes.set_xticks(angles)
        axes.set_xticklabels(methods, fontsize=8)
        axes.tick_params(axis="x", pad=12)
        axes.set_ylim(low, 100)
        # Radial tick labels sit halfway between the first two spokes, clear of the method names.
        axes.set_rlabel_position(180 / len(methods))
        axes.tick_params(axis="y", labelsize=7)
        axes.set_title(f"weights: {source}", fontsize=11, pad=18)

    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8, frameon=False)
    figure.suptitle(f"Mean image AUROC (%) per category group and method\n(radius: image AUROC in %, "
                    f"centre = {low:g})", fontsize=11)
    figure.tight_layout(rect=(0, 0.08, 1, 0.88))
    return save_figure(figure, out)


def layer_values(frames: dict[str, pd.DataFrame], dataset: str) -> pd.DataFrame:
    """Average the layer-ablation runs of one dataset: mean over categories per method, metric, source and layers.

    `frames` maps metric names to `load_results` frames. Only categories that have a value for
    every (source, layers) bar of a method and metric enter its means, so the bars of one panel
    average the same categories. Returns method, metric, source, layers, value (fraction) and
    n (categories).
    """
    rows = []
    for metric, frame in frames.items():
        if frame.empty:
            continue
        frame = frame[(frame["dataset"] == dataset) & frame["method"].isin(LAYER_METHODS)].copy()
        if frame.empty:
            continue
        frame["source"] = source_names(frame)
        for (category, method, source, layers), group in frame.groupby(["category", "method", "source", "layers"]):
            check_axes(group, f"{dataset}/{category}/{method}/{source}/layers {layers}", skip=("layers",))
        per_category = (frame.groupby(["method", "source", "layers", "category"])["value"].mean()
                        .dropna().reset_index())
        for method, runs in per_category.groupby("method"):
            bars = runs.groupby(["source", "layers"])["category"].apply(set)
            common = set.intersection(*bars.tolist())
            for (source, layers), _ in bars.items():
                selected = runs[(runs["source"] == source) & (runs["layers"] == layers)
                                & runs["category"].isin(common)]
                rows.append({"method": method, "metric": metric, "source": source, "layers": layers,
                             "value": selected["value"].mean() if len(selected) else math.nan,
                             "n": len(selected)})
    return pd.DataFrame(rows, columns=["method", "metric", "source", "layers", "value", "n"])


def layers_figure(frames: dict[str, pd.DataFrame], dataset: str, out: Path) -> list[Path]:
    """Draw bars of PatchCore and PaDiM per hierarchy-level set, weights sources side by side.

    The figure has one row per method and one column per metric (image AUROC, pixel AUROC,
    AUPRO). Bar heights are means over the categories that every bar of the panel has, in percent.
    """
    values = layer_values(frames, dataset)
    if values.empty:
        raise ConfigError(f"no PatchCore or PaDiM runs on {dataset} to draw the layer ablation; run them with "
                          "--layers 1,2, 2,3, 3,4 and 1,2,3")

    methods = [method for method in LAYER_METHODS if method in set(values["method"])]
    metrics = [metric for metric in STUDY_METRICS if metric in frames]
    sources = sorted(values["source"].unique(), key=source_rank)
    layer_sets = [layers for layers in LAYER_SETS if layers in set(values["layers"])]
    layer_sets += sorted(set(values["layers"]) - set(layer_sets))

    figure = Figure(figsize=(4.2 * len(metrics), 3.2 * len(methods) + 0.8))
    width = 0.8 / len(sources)
    for row, method in enumerate(methods):
        for column, metric in enumerate(metrics):
            axes = figure.add_subplot(len(methods), len(metrics), row * len(metrics) + column + 1)
            panel = values[(values["method"] == method) & (values["metric"] == metric)]
            for index, source in enumerate(sources):
                heights = []
                for layers in layer_sets:
                    match = panel[(panel["source"] == source) & (panel["layers"] == layers)]["value"]
                    heights.append(100 * float(match.iloc[0]) if len(match) and pd.notna(match.iloc[0]) else np.nan)
                positions = np.arange(len(layer_sets)) + (index - (len(sources) - 1) / 2) * width
                bars = axes.bar(positions, np.nan_to_num(heights), width, color=source_colour(source, sources),
                                label=source)
                axes.bar_label(bars, labels=["" if np.isnan(h) else f"{h:.1f}" for h in heights], fontsize=6,
                               padding=1)
            categories = int(panel["n"].max()) if len(panel) else 0
            short_label = METRIC_LABELS[metric].split(",")[0]
            axes.set_title(f"{method}: {short_label}, {categories} categories", fontsize=9)
            if categories == 0:
                axes.text(0.5, 0.5, "no category has a value for every bar", ha="center", va="center",
                          transform=axes.transAxes, fontsize=8)
            axes.set_xticks(np.arange(len(layer_sets)))
            axes.set_xticklabels(["{" + layers + "}" for layers in layer_sets])
            axes.set_xlabel("hierarchy levels j")
            axes.set_ylabel(f"{short_label} (%)")
            axes.set_ylim(0, 108)
            axes.grid(axis="y", alpha=0.3)

    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False,
                  title="weights")
    figure.suptitle(f"{dataset}: feature hierarchy ablation, mean over categories", fontsize=12)
    figure.tight_layout(rect=(0, 0.08, 1, 0.95))
    return save_figure(figure, out)
