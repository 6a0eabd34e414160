"""The sweep's search spaces: each stage's default (declared beside its config's fields) and their overrides.

``NAME=LOW..HIGH`` is a range (``:log`` for log-uniform), ``NAME=A|B`` a choice and ``NAME=VALUE``
a fixed value. What a value is follows from the declaration: a parameter whose default space is an
``IntDistribution`` (``epochs``), or an int field, takes whole numbers; a float one finite numbers;
a choice of an int field (``n_neighbors=3|5|7``) holds ints. Every value is checked against the
stage's config before any trial runs.
"""

from __future__ import annotations

import json
import math
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from emotion_exp import catalog
from emotion_exp.config import SearchSpace, field_types, search_space_of
from emotion_exp.errors import UserError


def declared_space(stage: str) -> SearchSpace:
    """The space the stage's config declares (``sweep_space()``); a stage without one cannot be swept."""
    declared = search_space_of(catalog.STAGES[stage].config)
    if declared is None:
        swept = ", ".join(catalog.sweepable())
        raise UserError(f"--stage {stage}: its config declares no search space; a sweep can search {swept}.")
    return declared


def search_space(stage: str, overrides: str = "") -> dict[str, BaseDistribution]:
    """The stage's default space with ``overrides`` (``--search_space``) applied, then checked."""
    declared = declared_space(stage)
    space = dict(declared.searched)
    named: set[str] = set()
    for item in (part.strip() for part in overrides.split(",")):
        if not item:
            continue
        name, equals, spec = (text.strip() for text in item.partition("="))
        if not equals or not spec:
            raise UserError(f"--search_space entries look like NAME=LOW..HIGH, NAME=A|B or NAME=VALUE; got {item!r}.")
        if name in named:
            raise UserError(
                f"--search_space names {name} twice ({overrides!r}); give each parameter once: a choice is "
                f"{name}=A|B, a range {name}=LOW..HIGH."
            )
        named.add(name)
        if name not in declared.names():
            raise UserError(
                f"--search_space: {name!r} is not searchable for the {stage} stage; expected one of "
                f"{', '.join(declared.names())}."
            )
        space[name] = _distribution(_number_kind(stage, name, declared), name, spec, item)
    for name, distribution in space.items():
        _check_values(stage, name, distribution)
    return space


def _number_kind(stage: str, name: str, declared: SearchSpace) -> type:
    """What values of ``name`` are: int where its default space draws whole numbers, else its field's type."""
    if isinstance(declared.searched.get(name), IntDistribution):
        return int
    return field_types(catalog.STAGES[stage].config)[name]


def _distribution(kind: type, name: str, spec: str, item: str) -> BaseDistribution:
    if ".." not in spec:
        return CategoricalDistribution(tuple(_value(kind, name, value.strip(), item) for value in spec.split("|")))
    bounds, _, scale = spec.partition(":")
    low_text, _, high_text = bounds.partition("..")
    if scale not in ("", "log"):
        raise UserError(f"--search_space {item!r}: a range ends with ':log' or nothing; got ':{scale}'.")
    if kind not in (int, float):
        raise UserError(f"--search_space {item!r}: {name} is not a number; give a choice such as {name}=A|B.")
    low, high = _value(kind, name, low_text.strip(), item), _value(kind, name, high_text.strip(), item)
    if not low < high or (scale == "log" and low <= 0):
        raise UserError(f"--search_space {item!r}: a range needs numbers LOW < HIGH (LOW > 0 for :log); got {spec!r}.")
    if kind is int:
        return IntDistribution(low, high, log=scale == "log")
    return FloatDistribution(low, high, log=scale == "log")


def _value(kind: type, name: str, text: str, item: str) -> Any:
    """``text`` as a value of ``kind``: a whole number, a finite number, or the text itself."""
    if kind not in (int, float):
        return text
    try:
        number = float(text)
        if not math.isfinite(number) or (kind is int and not number.is_integer()):
            raise ValueError(text)
    except ValueError:
        raise UserError(
            f"--search_space {item!r}: {name} takes {'whole' if kind is int else 'finite'} numbers; got {text!r}."
        ) from None
    return int(number) if kind is int else number


def _check_values(stage: str, name: str, distribution: BaseDistribution) -> None:
    """Build the stage's config with the space's extreme values, so a bad range fails before any trial."""
    if isinstance(distribution, CategoricalDistribution):
        values = distribution.choices
    else:
        values = (distribution.low, distribution.high)
    for value in values:
        catalog.STAGES[stage].config(**{name: value})


def space_description(space: dict[str, BaseDistribution]) -> str:
    """The space as the JSON the study records, to refuse resuming a study with another space."""
    return json.dumps({name: json.loads(distribution_to_json(d)) for name, d in sorted(space.items())})


def suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    """Ask the trial for a value of ``name`` from ``distribution``."""
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, log=distribution.log)
    return trial.suggest_categorical(name, distribution.choices)
