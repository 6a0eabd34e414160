"""Nested stratified subsets of the training split, for learning curves (no MLflow here)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from emotion_exp.data import DatasetSplits

MIN_PER_LABEL = 2  # TF-IDF calibrates by cross-validation, which needs two texts of every label


def stratified_order(labels: Sequence[int], seed: int, min_per_label: int = MIN_PER_LABEL) -> np.ndarray:
    """A seeded order of row positions whose every prefix is a stratified sample.

    ``min_per_label`` rows of every label come first (all of a smaller label), so any prefix at
    least that long holds every label; after them, rows are interleaved by their rank within
    their label divided by the label's size, so each prefix takes every label in proportion
    (give or take a row). Subsets taken as prefixes of one order are nested by construction.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    position = np.empty(len(labels), dtype=float)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        ranks = rng.permutation(len(rows))
        # The first ranks sort before every other row (-2 before -1 ...); the rest by their share of the label.
        position[rows] = np.where(ranks < min_per_label, ranks - min_per_label, (ranks + 0.5) / len(rows))
    jitter = rng.random(len(labels))
    return np.lexsort((jitter, position))


def subset_sizes(labels: Sequence[int], fractions: Sequence[float], min_per_label: int = MIN_PER_LABEL) -> list[int]:
    """Rows in the subset of each fraction: rounded, never fewer than the rows that hold every label."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    smallest = int(np.minimum(counts, min_per_label).sum())
    return [min(len(labels), max(smallest, round(fraction * len(labels)))) for fraction in fractions]


def distinct_fractions(
    labels: Sequence[int], fractions: Sequence[float], min_per_label: int = MIN_PER_LABEL
) -> tuple[list[float], list[str]]:
    """The ascending ``fractions`` that give distinct subset sizes (the first of each size), and a note per merge.

    On a small split several fractions round to the same rows (0.001, 0.002 and 0.003 of 6,000
    texts are all the 12 that hold every label twice): training the same subset three times
    would draw three identical points. Each merged fraction gets a sentence saying which point it joined.
    """
    kept: list[float] = []
    notes: list[str] = []
    sizes = subset_sizes(labels, fractions, min_per_label)
    seen: dict[int, float] = {}
    for fraction, size in zip(fractions, sizes):
        if size in seen:
            notes.append(
                f"--fractions {fraction:g} gives the same {size} training texts as {seen[size]:g} (rounded, and at "
                f"least {min_per_label} of every label): trained once, as {seen[size]:g}."
            )
            continue
        seen[size] = fraction
        kept.append(fraction)
    return kept, notes


def nested_stratified_subsets(
    labels: Sequence[int], fractions: Sequence[float], seed: int, min_per_label: int = MIN_PER_LABEL
) -> list[np.ndarray]:
    """Sorted row positions of one subset per fraction: for ascending fractions, growing nested subsets."""
    order = stratified_order(labels, seed, min_per_label)
    return [np.sort(order[:size]) for size in subset_sizes(labels, fractions, min_per_label)]


def with_train_rows(splits: DatasetSplits, rows: Sequence[int]) -> DatasetSplits:
    """The same splits with the training split cut to ``rows`` (validation and test whole)."""
    train = splits.train.iloc[np.asarray(rows)].reset_index(drop=True)
    return dataclasses.replace(splits, train=train, name=f"{splits.name}-train{len(train)}")
