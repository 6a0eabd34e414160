"""What a run prints: libraries kept quiet, progress that suits the output, closing lines and the summary.

By default the console shows what a user acts on: progress, one closing line per stage, the
study's summary, warnings of our own. ``--verbose`` (or ``EMOTION_EXP_VERBOSE=1``) lets MLflow,
transformers and the Trainer print everything they have to say. Progress is a bar on a terminal;
written to a file or a pipe (``mlflow run`` in CI, ``> log.txt``) it is one line every
``PROGRESS_STEP_PERCENT`` percent instead of hundreds of carriage-return frames.

This module never imports mlflow: callers hand it plain values.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

VERBOSE_ENV = "EMOTION_EXP_VERBOSE"
PROGRESS_STEP_PERCENT = 10


def verbose() -> bool:
    """Whether the user asked to see everything the libraries print."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false")


def say(message: str) -> None:
    """One line for the user on stdout, flushed so it keeps its place among progress lines (rank 0 only)."""
    from emotion_exp import distributed

    if distributed.is_main():
        print(message, flush=True)


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# Environment variables that keep the libraries quiet; set in this process (and so inherited by its children).
QUIET_ENVIRONMENT = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    # MLflow's "🏃 View run ... / 🧪 View experiment ..." pair at every run's end on a tracking server (a study
    # printed one per stage, twice under `mlflow run`); the closing lines name the run, the summary links the UI.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def quiet_libraries() -> None:
    """Keep the libraries' routine chatter off the console unless ``--verbose`` was asked for.

    What stays: errors and warnings of MLflow, errors of transformers (its weight-loading report
    is replaced by our one line in ``finetune.load_classifier``). MLflow's CloudPickle notice is
    dropped: pickling the fitted pipeline into the model is the design, and the model is ours.
    """
    if verbose():
        return
    # Read when the libraries are imported; importing transformers here would slow every command down.
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    if "transformers" in sys.modules:  # already imported (a notebook, a test): set it directly
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.pyfunc").addFilter(_DropMessages("Passing a Python object as `python_model`"))


class LineProgress:
    """Progress for a file or pipe: a line at every ``PROGRESS_STEP_PERCENT`` percent (and at the end).

    Each line gives the rate so far and the time left at that rate, as a terminal's bar does: a
    Spark job or a long extraction otherwise said only how far it was, not when it would end.
    """

    def __init__(self, total: int, description: str, unit: str, stream: IO[str]) -> None:
        self.total = total
        self.description = description
        self.unit = unit
        self.stream = stream
        self.done = 0
        self._printed_step = 0
        self._started = time.perf_counter()

    def update(self, count: int = 1) -> None:
        self.done += count
        step = math.floor(100 * self.done / self.total / PROGRESS_STEP_PERCENT) if self.total else 0
        if step > self._printed_step:
            self._printed_step = step
            seconds = time.perf_counter() - self._started
            rate = self.done / seconds if seconds > 0 else math.inf
            left = f", {_duration((self.total - self.done) / rate)} left" if self.done < self.total else ""
            self.stream.write(
                f"{self.description}: {100 * self.done / self.total:3.0f}% ({self.done:,}/{self.total:,} {self.unit}s, "
                f"{_duration(seconds)}, {_rate(rate)} {self.unit}s/s{left})\n"
            )
            self.stream.flush()

    def write(self, line: str, file: IO[str] | None = None) -> None:
        """A line of its own (tqdm's ``write``, so callers treat both reporters alike)."""
        print(line, file=file or self.stream, flush=True)

    def close(self) -> None:
        """Nothing to clear: every line is already complete."""

    def __enter__(self) -> LineProgress:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _duration(seconds: float) -> str:
    """``42 s``, ``7 min 5 s`` or ``2 h 10 min``: what a user reads at a glance."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def _rate(per_second: float) -> str:
    """Two significant figures below 100 a second (steps of training are slow), whole numbers above."""
    if math.isinf(per_second) or per_second >= 100:
        return f"{per_second:,.0f}"
    return f"{per_second:.2g}"


def progress(total: int, description: str, *, unit: str = "text", enabled: bool = True, stream: IO[str] | None = None):
    """A progress reporter with ``update(n)``: a tqdm bar on a terminal, ``LineProgress`` elsewhere."""
    from tqdm.auto import tqdm

    stream = stream or sys.stderr
    if enabled and not stream.isatty():
        return LineProgress(total, description, unit, stream)
    return tqdm(total=total, desc=description, unit=unit, file=stream, disable=not enabled)


def trainer_progress() -> Any:
    """A Trainer callback that reports training steps as ``progress`` does and each evaluation in one line.

    It takes the place of the Trainer's own bar, which prints every raw log dictionary
    (``{'loss': '1.803', ...}``); with ``--verbose`` those dictionaries are printed too.
    """
    from transformers import TrainerCallback

    class TrainerProgress(TrainerCallback):
        def __init__(self) -> None:
            self.bar: Any = None
            self.steps = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                self.bar = progress(state.max_steps, "finetune", unit="step")
                self.steps = 0
                self.on_step_end(args, state, control)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None and state.global_step > self.steps:
                self.bar.update(state.global_step - self.steps)
                self.steps = state.global_step

        def on_evaluate(
            self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any
        ) -> None:
            if self.bar is not None and metrics:
                self.bar.write(evaluation_line(state.epoch or 0.0, args.num_train_epochs, metrics), file=sys.stderr)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
        ) -> None:
            if self.bar is not None and logs and verbose():
                self.bar.write(str(logs), file=sys.stderr)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return TrainerProgress()


def evaluation_line(epoch: float, epochs: float, metrics: Mapping[str, float]) -> str:
    """``epoch 1/3: validation loss 1.234, accuracy 0.612, weighted F1 0.598`` from the Trainer's eval metrics."""
    parts = [
        f"{label} {metrics[key]:.3f}"
        for key, label in (
            ("eval_loss", "validation loss"),
            ("eval_accuracy", "accuracy"),
            ("eval_f1_weighted", "weighted F1"),
        )
        if key in metrics
    ]
    return f"epoch {epoch:g}/{epochs:g}: {', '.join(parts)}"


NOT_REGISTERED_TAG = "not_registered"
"""On a model stage run on its own that registered nothing: how it would register (its closing line says it)."""
# The scores a stage's closing line shows, in order, with their labels.
CLOSING_SCORES = (("val_accuracy", "val accuracy"), ("val_f1_weighted", "val F1"), ("test_accuracy", "test accuracy"))


def scores_closing(metrics: Mapping[str, float], tags: Mapping[str, str], *, registered: str = "registered as") -> str:
    """A model stage's closing words: its key scores with intervals (and spread over seeds) and its version."""
    scores = [f"{label} {shown_score(metrics, key)}" for key, label in CLOSING_SCORES if key in metrics]
    what = ", ".join(scores) or "finished"
    if "val_accuracy_mean" in metrics:  # several seeds: the spread first, then the best seed's model
        what = f"val accuracy {shown_spread(metrics, 'val_accuracy')}; best seed {tags.get('best_seed', '?')}: {what}"
    if tags.get("registered_version"):
        what += f"; {registered} version {tags['registered_version']} of {tags.get('registered_model', '?')!r}"
    elif tags.get(NOT_REGISTERED_TAG):
        what += f"; not registered: {tags[NOT_REGISTERED_TAG]}"
    return what


def evaluated_closing(metrics: Mapping[str, float], tags: Mapping[str, str]) -> str:
    """evaluate's: its tags name the version it scored; it registers nothing."""
    return scores_closing(metrics, tags, registered="scored")


def extract_closing(metrics: Mapping[str, float], tags: Mapping[str, str]) -> str:
    if tags.get("reused_features") == "true":
        return f"reused the features of run {tags.get('features_run_id', '?')}"
    rows = sum(metrics.get(f"{split}_rows", 0) for split in ("train", "val", "test"))
    return f"{rows:,.0f} texts at {metrics.get('texts_per_second', 0):,.0f} texts/s"


def predict_closing(metrics: Mapping[str, float], tags: Mapping[str, str]) -> str:
    return f"{metrics.get('rows', 0):,.0f} texts at {metrics.get('texts_per_second', 0):,.0f} texts/s"


def compare_closing(metrics: Mapping[str, float], tags: Mapping[str, str]) -> str:
    return tags.get("compare_verdict", "finished")


def promote_closing(metrics: Mapping[str, float], tags: Mapping[str, str]) -> str:
    """What promote decided, for which registered model, and why."""
    verdict = "promoted" if tags.get("promote_decision") == "promoted" else "kept the alias"
    return f"{verdict} for {tags.get('registered_model', '?')!r}: {tags.get('promote_reason', '')}"


def shown_score(metrics: Mapping[str, Any], key: str) -> str:
    """``0.933 [0.922, 0.944]``: a logged score with its logged 95% interval (``-`` when missing)."""
    value, low, high = metrics.get(key), metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    if _missing(value):
        return "-"
    if _missing(low) or _missing(high):
        return f"{value:.4f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def shown_spread(metrics: Mapping[str, Any], key: str) -> str:
    """``0.930 ± 0.004 over 3 seeds (0.926-0.934)``: a score's mean and sample std over seeds ('' without seeds)."""
    mean = metrics.get(f"{key}_mean")
    if _missing(mean):
        return ""
    low, high, count = metrics[f"{key}_min"], metrics[f"{key}_max"], metrics.get("seeds_count", 0)
    return f"{mean:.3f} ± {metrics[f'{key}_std']:.3f} over {count:.0f} seeds ({low:.3f}-{high:.3f})"


def shown_difference(row: Mapping[str, Any], prefix: str) -> str:
    """``+0.012 [+0.004, +0.020] vs probe, p=0.003``: a stage's paired accuracy difference to its best other stage."""
    delta = row.get(f"{prefix}_accuracy_delta")
    if _missing(delta):
        return "-"
    low, high = row[f"{prefix}_accuracy_delta_ci_low"], row[f"{prefix}_accuracy_delta_ci_high"]
    pvalue = row[f"{prefix}_mcnemar_pvalue"]
    return f"{delta:+.3f} [{low:+.3f}, {high:+.3f}] vs {row.get('versus', '?')}, p={pvalue:.2g}"


def _one_fit(row: Mapping[str, Any]) -> str:
    """What a stage that trained once shows in the seeds column (its ``seeds_note`` says why)."""
    return "one fit (the seed changes nothing)" if row.get("tags", {}).get("seeds_note") else "-"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def summary(
    rows: Sequence[Mapping[str, Any]],
    *,
    run_id: str,
    seconds: float,
    experiment: str,
    decision: str | None,
    champion_uri: str | None,
    tracking_uri: str,
    ui_port: int,
    caution: str | None = None,
) -> str:
    """The study's closing summary: the comparison, the champion decision, the store and how to look at it.

    ``rows`` hold ``stage``, ``seconds``, the scores in ``CLOSING_SCORES`` with their intervals
    (missing ones print as ``-``) and, where the study compared them, the paired validation
    difference to the best other stage (``shown_difference``). ``caution``: one line on what the
    data cannot tell (a validation split too small to separate the stages). ``ui_port``: where the
    printed ``mlflow ui`` command serves a local store.
    """
    paired = any(not _missing(row.get("val_accuracy_delta")) for row in rows)
    seeded = any(not _missing(row.get("val_accuracy_mean")) for row in rows)
    header = ["stage", *(label for _, label in CLOSING_SCORES), "seconds"]
    header += ["val accuracy over seeds"] if seeded else []
    header += ["val accuracy minus the best other stage's (paired 95% CI)"] if paired else []
    table = [header] + [
        [
            str(row["stage"]),
            *(shown_score(row, key) for key, _ in CLOSING_SCORES),
            f"{row['seconds']:.0f}" if row.get("seconds") is not None else "-",
            *([shown_spread(row, "val_accuracy") or _one_fit(row)] if seeded else []),
            *([shown_difference(row, "val")] if paired else []),
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        for line in table
    ]
    text = [f"Study finished in {seconds:.0f} s: run {run_id} in experiment {experiment!r}.", "", *lines, ""]
    if caution:
        text.append(caution)
    if decision is not None:
        text.append(f"Champion: {decision}" + (f" ({champion_uri})" if champion_uri else ""))
    store, command = ui_command(tracking_uri, ui_port)
    text += [
        f"Store: {store} (MLflow's own tools find it from any folder after this line)",
        f"export MLFLOW_TRACKING_URI={shlex.quote(store)}",
        f"Open it: {command}",
    ]
    return "\n".join(text)


UI_ENVIRONMENT = {
    # MLflow 3 otherwise starts a job runner for its GenAI features (seven more processes importing MLflow),
    # which nothing here uses.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    # MLflow's server imports starlette.middleware.wsgi, which warns in every worker: nothing a user can act on.
    "PYTHONWARNINGS": "ignore:starlette.middleware.wsgi is deprecated",
}
"""What the printed ``mlflow ui`` command sets: it answers sooner and prints no warning."""


def store_uri(tracking_uri: str) -> str:
    """The store as an absolute URI, the same from any folder (a relative ``sqlite:///mlflow.db`` is not)."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri.removeprefix('sqlite:///')).expanduser().resolve()}"
    return Path(tracking_uri.removeprefix("file://")).expanduser().resolve().as_uri()


def ui_invocation(tracking_uri: str, port: int) -> tuple[dict[str, str], list[str]]:
    """The environment and command line of ``mlflow ui`` on a local store, on 127.0.0.1:``port``.

    One worker: MLflow's default of four starts four processes that each import MLflow before the
    first page answers (63 s against 24 s on two busy cores, docs/performance.md).
    """
    command = ["mlflow", "ui", "--backend-store-uri", store_uri(tracking_uri), "--port", str(port), "--workers", "1"]
    return dict(UI_ENVIRONMENT), command


def ui_command(tracking_uri: str, port: int) -> tuple[str, str]:
    """Where the store is, and the one command that shows it in the MLflow UI (from any folder)."""
    store = store_uri(tracking_uri)
    if store.startswith(("http://", "https://")):
        return store, f"open {store} in a browser (the tracking server serves the UI)"
    environment, command = ui_invocation(store, port)
    assignments = [f"{name}={shlex.quote(value)}" for name, value in environment.items()]
    return store, " ".join([*assignments, shlex.join(command)])
