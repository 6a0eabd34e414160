"""The sweep's search spaces: each stage's default (declared in ``catalog``) and ``--search_space``'s language.

``NAME=LOW..HIGH`` is a range (``:log`` for log-uniform), ``NAME=A|B`` a choice and ``NAME=VALUE``
a fixed value; every value is checked against the stage's config before any trial runs.
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
from emotion_exp.config import STAGE_CONFIGS
from emotion_exp.errors import UserError

INT_PARAMS = ("epochs", "batch_size", "max_length", "max_iter")
FLOAT_PARAMS = ("learning_rate", "warmup", "weight_decay", "C")


def search_space(stage: str, overrides: str = "") -> dict[str, BaseDistribution]:
    """The stage's default space (``catalog``) with ``overrides`` (``--search_space``) applied, then checked.

    ``NAME=LOW..HIGH`` is a range (``:log`` for log-uniform; whole numbers for integer parameters),
    ``NAME=A|B`` a choice and ``NAME=VALUE`` a fixed value.
    """
    declared = catalog.STAGES[stage]
    space = {
        name.strip(): _distribution(name.strip(), spec.strip(), item)
        for item in declared.search_space.split(",")
        for name, _, spec in [item.partition("=")]
    }
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
        if name not in declared.searchable:
            raise UserError(
                f"--search_space: {name!r} is not searchable for the {stage} stage; expected one of "
                f"{', '.join(declared.searchable)}."
            )
        space[name] = _distribution(name, spec, item)
    for name, distribution in space.items():
        _check_values(stage, name, distribution)
    return space


def _distribution(name: str, spec: str, item: str) -> BaseDistribution:
    if ".." in spec:
        bounds, _, scale = spec.partition(":")
        low_text, _, high_text = bounds.partition("..")
        if scale not in ("", "log"):
            raise UserError(f"--search_space {item!r}: a range ends with ':log' or nothing; got ':{scale}'.")
        low, high = _value(name, low_text.strip(), item), _value(name, high_text.strip(), item)
        if not isinstance(low, (int, float)) or not low < high or (scale == "log" and low <= 0):
            raise UserError(
                f"--search_space {item!r}: a range needs numbers LOW < HIGH (LOW > 0 for :log); got {spec!r}."
            )
        if name in INT_PARAMS:
            return IntDistribution(int(low), int(high), log=scale == "log")
        return FloatDistribution(float(low), float(high), log=scale == "log")
    return CategoricalDistribution(tuple(_value(name, value.strip(), item) for value in spec.split("|")))


def _value(name: str, text: str, item: str) -> Any:
    try:
        if name in INT_PARAMS:
            number = float(text)
            if not number.is_integer():
                raise ValueError(text)
            return int(number)
        if name in FLOAT_PARAMS:
            number = float(text)
            if not math.isfinite(number):
                raise ValueError(text)
            return number
    except ValueError:
        kind = "whole numbers" if name in INT_PARAMS else "finite numbers"
        raise UserError(f"--search_space {item!r}: {name} takes {kind}; got {text!r}.") from None
    return text


def _check_values(stage: str, name: str, distribution: BaseDistribution) -> None:
    """Build the stage's config with the space's extreme values, so a bad range fails before any trial."""
    if isinstance(distribution, CategoricalDistribution):
        values = distribution.choices
    else:
        values = (distribution.low, distribution.high)
    for value in values:
        STAGE_CONFIGS[stage](**{name: value})


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
