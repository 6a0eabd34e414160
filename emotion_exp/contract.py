"""What every emotion-exp model answers with, known to the registry and the stages without loading a model.

A leaf module: the output columns (``label`` and ``prob_<label>``) and the logged model's name,
shared by ``pyfunc`` (which builds the models) and ``registry`` (which reads their signatures),
so the registry need not import the torch-backed model code.
"""

from __future__ import annotations

from collections.abc import Iterable

MODEL_NAME = "model"
"""Every stage logs its model under this name."""


def probability_column(label: str) -> str:
    """Name of the output column holding a label's probability."""
    return f"prob_{label}"


def label_names_of(output_columns: Iterable[str]) -> tuple[str, ...] | None:
    """The label names a model answers with, from its output columns (a signature's); None for other models."""
    prefix = probability_column("")
    names = tuple(str(name)[len(prefix) :] for name in output_columns if str(name).startswith(prefix))
    return names or None
