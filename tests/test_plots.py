"""The figures: a scatter for small UMAPs and the study's hexbins for large ones, titles, a legend off the bars."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.container import BarContainer

from emotion_exp import plots
from tests.helpers import LABELS as NAMES


def _embedding(points: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.arange(points) % len(NAMES)
    return rng.normal(size=(points, 2)) + labels[:, None], labels


@pytest.mark.parametrize(("points", "kind"), [(1665, PathCollection), (plots.SCATTER_MAX_POINTS, PolyCollection)])
def test_small_umaps_are_scatters_and_large_ones_the_studys_hexbins(points: int, kind: type) -> None:
    embedding, labels = _embedding(points)
    for figure in (plots.umap_overlay(embedding, labels, NAMES), plots.umap_per_label(embedding, labels, NAMES)):
        drawn = [c for ax in figure.axes for c in ax.collections]
        assert len(drawn) == len(NAMES) and all(type(c) is kind for c in drawn)
        plt.close(figure)


def test_the_label_distribution_names_its_split() -> None:
    figure = plots.label_distribution(np.array([0, 1, 1]), NAMES, split="validation")
    assert figure.axes[0].get_title() == "Distribution of Labels (validation, 3 texts)"
    plt.close(figure)


def test_the_comparison_legend_covers_no_bar() -> None:
    table = pd.DataFrame(
        {
            "stage": ["dummy", "probe", "tfidf", "finetune"],
            "val_accuracy": [0.35, 0.62, 0.78, 0.99],
            "val_f1_weighted": [0.18, 0.6, 0.77, 0.99],
        }
    )
    figure = plots.comparison(table)
    figure.canvas.draw()
    [ax] = figure.axes
    legend = ax.get_legend().get_window_extent()
    bars = [patch.get_window_extent() for patch in ax.patches]
    assert len(bars) == 8
    assert not any(legend.overlaps(bar) for bar in bars)
    plt.close(figure)


def test_the_comparison_bars_and_the_learning_curve_carry_their_intervals() -> None:
    table = pd.DataFrame(
        {
            "stage": ["dummy", "finetune"],
            "val_accuracy": [0.35, 0.93],
            "val_accuracy_ci_low": [0.33, 0.92],
            "val_accuracy_ci_high": [0.37, 0.94],
        }
    )
    figure = plots.comparison(table)
    [ax] = figure.axes
    [bars] = [c for c in ax.containers if isinstance(c, BarContainer)]
    [errorbar] = bars.errorbar.lines[2]  # the vertical error segments
    segments = [segment[:, 1].tolist() for segment in errorbar.get_segments()]
    assert segments == [[0.33, 0.37], [0.92, 0.94]]
    plt.close(figure)

    curve = table.assign(train_size=[100, 100]).replace({"dummy": "tfidf"})
    figure = plots.learning_curve(curve)
    [ax] = figure.axes
    assert len(ax.collections) == 2  # one band per stage
    plt.close(figure)


@pytest.mark.slow  # a fresh process, so that numba compiles pynndescent's functions again
def test_umap_on_real_sized_data_prints_no_numba_cache_warning() -> None:
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    # Over 4,096 points UMAP runs pynndescent, whose nn_descent numba cannot cache (it holds a global array).
    script = (
        "import numpy as np; from emotion_exp import plots; "
        "x = np.random.default_rng(0).normal(size=(4200, 8)); "
        "plots.umap_embedding(x, np.arange(4200) % 6, seed=0, max_points=5000)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Cannot cache compiled function" not in done.stderr, done.stderr[-3000:]
