"""The study's figures. Each function returns a matplotlib Figure; callers save or log it."""

from __future__ import annotations

import functools
import math
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

# The study's colour maps, one per label in its order; more labels cycle through them.
LABEL_CMAPS = ("Greys", "Blues", "Oranges", "Reds", "Purples", "Greens")
# Below this many points a UMAP is drawn as a scatter: hexbins need thousands of points to show density.
SCATTER_MAX_POINTS = 5000


def label_distribution(labels: Sequence[int], label_names: Sequence[str], split: str = "train") -> Figure:
    """Horizontal bars of the label counts of one split, ascending, as in the study; the title names the split."""
    counts = pd.Series(np.asarray(labels)).map(dict(enumerate(label_names))).value_counts(ascending=True)
    counts = counts.reindex([n for n in counts.index] + [n for n in label_names if n not in counts.index], fill_value=0)
    counts = counts.sort_values()
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(label_names) + 1.5))
    ax.barh(counts.index.astype(str), counts.to_numpy())
    ax.set_title(f"Distribution of Labels ({split}, {len(labels):,} texts)")
    ax.set_xlabel("texts")
    fig.tight_layout()
    return fig


def confusion_matrix(
    confusion: np.ndarray, label_names: Sequence[str], title: str = "Normalized Confusion Matrix"
) -> Figure:
    """Row-normalised confusion matrix with label names, as in the study."""
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(5.0, 0.8 * len(label_names) + 1)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(confusion_matrix=confusion, display_labels=list(label_names)).plot(
        cmap="Blues", values_format=".2f", ax=ax, colorbar=False
    )
    ax.set_title(title)
    fig.tight_layout()
    return fig


def umap_embedding(
    features: np.ndarray, labels: np.ndarray, *, seed: int, max_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """Project features to 2-D like the study: MinMax scaling, then UMAP with the cosine metric.

    At most ``max_points`` rows are used (a seeded, stratified-by-chance sample) because UMAP's
    cost grows faster than linearly; returns the embedding and the labels of the rows used.
    """
    import umap
    from numba.core.errors import NumbaWarning
    from sklearn.preprocessing import MinMaxScaler

    _cache_umap_compilation()
    labels = np.asarray(labels)
    if len(features) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(len(features), size=max_points, replace=False))
        features, labels = features[rows], labels[rows]
    scaled = MinMaxScaler().fit_transform(features)
    reducer = umap.UMAP(
        n_components=2,
        metric="cosine",
        random_state=seed,
        n_jobs=1,  # what a seed implies anyway; said explicitly, umap does not warn that it overrode it
        n_neighbors=min(15, len(features) - 1),
    )
    with warnings.catch_warnings():
        # Caching was asked for every function (_cache_umap_compilation); over 4,096 points pynndescent's
        # nn_descent runs, which holds a large global array, and numba says once per process that it compiles it
        # in memory ("Cannot cache compiled function ... as it uses dynamic globals"): as it always did.
        warnings.filterwarnings("ignore", ".*Cannot cache compiled function", NumbaWarning)
        return reducer.fit_transform(scaled), labels


@functools.cache
def _cache_umap_compilation() -> None:
    """Keep UMAP's numba-compiled functions in numba's on-disk cache: compiling them costs 10-30 s of CPU,
    which every run that draws a UMAP (each stage, each sweep trial, each test's subprocess) paid again.
    Numba keys the cache by source file and CPU, so a changed umap or machine compiles afresh. Where numba
    finds no writable folder (umap's own, the user's cache, NUMBA_CACHE_DIR) it compiles in memory as before."""
    from numba.core.registry import CPUDispatcher

    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("umap", "pynndescent") and module is not None:
            for value in list(vars(module).values()):
                if isinstance(value, CPUDispatcher):
                    try:
                        value.enable_caching()
                    except RuntimeError:  # "cannot cache function ...: no locator available"
                        return


def _cmap(index: int) -> str:
    return LABEL_CMAPS[index % len(LABEL_CMAPS)]


def _draw_label(ax: plt.Axes, points: np.ndarray, index: int, *, total: int, overlay: bool, extent: Any = None) -> None:
    """One label's points: a scatter for small data, else the study's hexbin density in the label's colour map."""
    if total < SCATTER_MAX_POINTS:
        size = 12 if total < 1000 else 6
        ax.scatter(
            points[:, 0], points[:, 1], s=size, color=_colour(index), alpha=0.6 if overlay else 0.8, linewidths=0
        )
    else:
        ax.hexbin(
            points[:, 0],
            points[:, 1],
            cmap=_cmap(index),
            gridsize=20,
            linewidths=0,
            alpha=0.5 if overlay else 1.0,
            mincnt=1 if overlay else None,
            extent=extent,
        )


def _colour(index: int) -> tuple[float, float, float, float]:
    return plt.get_cmap(_cmap(index))(0.7)


def umap_overlay(
    embedding: np.ndarray, labels: np.ndarray, label_names: Sequence[str], title: str = "UMAP of the features"
) -> Figure:
    """All labels drawn over each other, with a legend (the study's first view).

    Hexbin densities as in the study from ``SCATTER_MAX_POINTS`` points on; fewer points are a scatter.
    """
    fig, ax = plt.subplots(figsize=(7, 5))
    for index in range(len(label_names)):
        points = embedding[labels == index]
        if len(points):
            _draw_label(ax, points, index, total=len(embedding), overlay=True)
    handles = [Patch(facecolor=_colour(i), edgecolor="k", label=name) for i, name in enumerate(label_names)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(f"{title} ({len(embedding):,} points)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return fig


def umap_per_label(embedding: np.ndarray, labels: np.ndarray, label_names: Sequence[str]) -> Figure:
    """One panel per label on shared axes, titled with it (2x3 for the study's six)."""
    columns = 3 if len(label_names) > 4 else max(1, len(label_names))
    rows = math.ceil(len(label_names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(7, 2.5 * rows + 0.5), squeeze=False, sharex=True, sharey=True)
    extent = (
        (
            *np.nanmin(embedding, axis=0)[[0]],
            *np.nanmax(embedding, axis=0)[[0]],
            *np.nanmin(embedding, axis=0)[[1]],
            *np.nanmax(embedding, axis=0)[[1]],
        )
        if len(embedding)
        else None
    )
    flat = axes.flatten()
    for index, name in enumerate(label_names):
        points = embedding[labels == index]
        ax = flat[index]
        if len(points):
            _draw_label(ax, points, index, total=len(embedding), overlay=False, extent=extent)
        ax.set_title(f"{name} ({len(points):,})")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in flat[len(label_names) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def comparison(table: pd.DataFrame, title: str = "Validation scores by stage (error bars: 95% intervals)") -> Figure:
    """Grouped bars of validation accuracy and weighted F1 per stage (the study's closing comparison).

    Where the table has ``<metric>_ci_low``/``_ci_high`` columns, each bar carries its 95% interval
    as an error bar, so a reader sees at once which gaps chance alone could make.
    """
    metrics = [m for m in ("val_accuracy", "val_f1_weighted") if m in table.columns]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(table) + 2), 4))
    width = 0.8 / max(1, len(metrics))
    positions = np.arange(len(table))
    for offset, metric in enumerate(metrics):
        values = table[metric].to_numpy(dtype=float)
        error = None
        if {f"{metric}_ci_low", f"{metric}_ci_high"} <= set(table.columns):
            low = table[f"{metric}_ci_low"].to_numpy(dtype=float)
            high = table[f"{metric}_ci_high"].to_numpy(dtype=float)
            error = np.nan_to_num(np.vstack([values - low, high - values]))
        bars = ax.bar(positions + offset * width - 0.4 + width / 2, values, width, yerr=error, capsize=3, label=metric)
        # With error bars the value goes inside its bar, where no interval can cover it.
        ax.bar_label(bars, fmt="%.3f", fontsize=8, label_type="edge" if error is None else "center")
    ax.set_xticks(positions, table["stage"].astype(str))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title(title, pad=24)
    # Above the axes, under the title: inside, it covered a bar whatever corner it took.
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(metrics), frameon=False)
    fig.tight_layout()
    return fig


def learning_curve(table: pd.DataFrame, floor: float | None = None, metric: str = "val_accuracy") -> Figure:
    """``metric`` against the number of training texts (log scale), one line per stage, the dummy as a floor.

    Where the table has ``<metric>_ci_low``/``_ci_high``, each line carries its 95% interval as a band.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bands = {f"{metric}_ci_low", f"{metric}_ci_high"} <= set(table.columns)
    for stage, points in table.groupby("stage", sort=False):
        points = points.sort_values("train_size")
        [line] = ax.plot(points["train_size"], points[metric], marker="o", label=str(stage))
        if bands:
            low = points[f"{metric}_ci_low"].to_numpy(dtype=float)
            high = points[f"{metric}_ci_high"].to_numpy(dtype=float)
            ax.fill_between(points["train_size"], low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    if floor is not None:
        ax.axhline(floor, color="grey", linestyle="--", label="dummy (most frequent)")
    ax.set_xscale("log")
    ax.set_xlabel("training texts (log scale)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_ylim(0, 1.0)
    ax.set_title("Learning curve")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def reliability(bins: pd.DataFrame, ece: float, title: str = "Reliability diagram") -> Figure:
    """Accuracy against confidence per equal-width bin, the diagonal of perfect calibration, and bin counts.

    ``bins`` is ``analysis.reliability``'s table. Bars below the diagonal are over-confident
    bins; the lower panel shows how many texts each bin holds, so a far-off bar of few texts
    is read as noise.
    """
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6.5), sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    width = (bins["upper"] - bins["lower"]).to_numpy()
    centres = ((bins["lower"] + bins["upper"]) / 2).to_numpy()
    filled = bins["count"].to_numpy() > 0
    top.bar(centres[filled], bins["accuracy"].to_numpy()[filled], width[filled], edgecolor="k", label="accuracy")
    top.bar(
        centres[filled],
        (bins["confidence"] - bins["accuracy"]).to_numpy()[filled],
        width[filled],
        bottom=bins["accuracy"].to_numpy()[filled],
        fill=False,
        hatch="//",
        edgecolor="tab:red",
        label="gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"{title} (ECE {ece:.3f})")
    top.legend(loc="upper left")
    counts = bins["count"].to_numpy()
    bars = bottom.bar(centres, counts, width, color="grey", edgecolor="k")
    bottom.bar_label(bars, labels=[str(c) if c else "" for c in counts], fontsize=7)
    bottom.set_ylim(0, max(1, counts.max()) * 1.25)
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (probability of the predicted label)")
    bottom.set_ylabel("texts")
    fig.tight_layout()
    return fig
