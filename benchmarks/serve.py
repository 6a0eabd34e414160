"""Serving latency and throughput: torch fp32, torch bf16 (where native) and ONNX Runtime, each behind a real
`mlflow models serve` on loopback, with one and with eight concurrent clients.

One model (``--model-uri``, or a brief fine-tune of ``--model``) is served in variants: a copy whose
logged ``precision`` is set to fp32, one set to bf16 (only where the CPU runs bf16 natively; by the
model_config ``precision`` where the model has it), and,
where the model can choose its runtime (model_config ``runtime``), the model with
``SERVING_MODEL_CONFIG='{"runtime": "onnx"}'``. All servers run at once (``--env-manager local``,
MLflow's one worker), so load on the machine hits all alike: one client's requests go to the
variants in turn, request by request; the eight clients' rounds go to the variants in turn, round
by round. Measured: single-text latency (p50/p95/p99), the server's CPU time per single-text request
(user + system of its processes: a figure the machine's load barely moves) and throughput of requests
of 64 texts, each with a bounded number of requests and a time limit.

MLflow's own floor is served beside them: a trivial pyfunc model with the same signature that
answers every text with a fixed label, so what remains above it is the model's. One request is
then profiled in this process, part by part (MLflow's own work measured on the trivial model, our
input checks, the tokenizer, the ONNX session, our output frame); HTTP is what the served p50 adds.

    python -m benchmarks.serve [--quick] [--track] [--model-uri URI] [--model SPEC]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import harness

BATCH_SIZE = 64
CLIENTS = (1, 8)
ONNX_P50_GOAL_MS = 10.0
TORCH_OVER_ONNX_GOAL = 1.5
"""Issue 35: one text in at most 10 ms p50 with ONNX Runtime, one client; torch at most 1.5x that."""
PROFILE_REQUESTS = 200
PROFILE_BLOCK = 10


FLOOR = "mlflow floor"
"""The trivial model's variant: MLflow's server and our signature, no model work."""


@dataclass
class Variant:
    """One served form of the model: its folder, the serving environment it needs, its precision for the peak."""

    name: str
    folder: Path
    precision: str
    serving_config: dict[str, str] = field(default_factory=dict)
    url: str = ""
    single: dict[int, list[float]] = field(default_factory=dict)
    """Single-text latencies (s) by number of clients."""
    batched: dict[int, float] = field(default_factory=dict)
    """Texts per second of requests of ``BATCH_SIZE`` texts by number of clients."""
    cpu_per_request: float = 0.0
    """CPU seconds (user + system) the server's processes spent per single-text request, one client."""


def bounded(items: list, seconds: float) -> Iterator:
    """Yield items until they run out or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    for item in items:
        if time.monotonic() > deadline:
            return
        yield item


def with_precision(source: Path, target: Path, precision: str) -> Path:
    """A copy of the pyfunc model folder ``source`` whose encoder model runs in ``precision``.

    Models logged before the model_config key ``precision`` took their precision from the pickled
    model only, not from the serving environment, so the copy's pickle is rewritten with ``precision`` set.
    """
    import cloudpickle

    shutil.copytree(source, target)
    pickled = _pickled_model(target)
    with pickled.open("rb") as file:
        model = cloudpickle.load(file)
    if not hasattr(model, "precision"):
        raise SystemExit(f"error: {source} is no encoder model of this project (it has no precision to set)")
    model.precision = precision
    with pickled.open("wb") as file:
        cloudpickle.dump(model, file)
    return target


def _pickled_model(folder: Path) -> Path:
    """The pickled model object of the pyfunc model folder ``folder``."""
    return folder / _flavor(folder)["python_model"]


def trivial_model(folder: Path, label_names: list[str]) -> Path:
    """A pyfunc model with our signature that answers every text with the first label: MLflow's own floor.

    The class is defined here, inside the function, so that cloudpickle keeps it by value: the server
    loads it without importing this benchmark.
    """
    import mlflow
    import pandas as pd

    from emotion_exp.contract import probability_column
    from emotion_exp.pyfunc.inputs import signature

    columns = ["label", *(probability_column(name) for name in label_names)]
    answer = [label_names[0], 1.0, *([0.0] * (len(label_names) - 1))]

    # MLflow warns as the class is defined that it has no type hints, and logs as it is saved what pickling
    # a Python object implies: both known here.
    with warnings.catch_warnings(), quiet_logger("mlflow.pyfunc"):
        warnings.simplefilter("ignore")

        class Fixed(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):  # untyped: MLflow adds no type-hint checks
                return pd.DataFrame([answer] * len(model_input), columns=columns)

        mlflow.pyfunc.save_model(str(folder), python_model=Fixed(), signature=signature(label_names))
    return folder


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """The logger ``name`` at ERROR for the block, at its own level afterwards."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def variants(local: Path, workdir: Path) -> tuple[list[Variant], str]:
    """The variants to serve here (MLflow's floor first), and a note on any left out."""
    from mlflow.models import Model

    from emotion_exp import models
    from emotion_exp.contract import label_names_of

    config = Model.load(local).flavors["python_function"].get("config") or {}
    choose = "runtime" in config
    torch_config = {"runtime": "torch"} if choose else {}
    precisions = ["fp32", "bf16"] if models.native_bf16() else ["fp32"]
    if "precision" in config:  # the model takes its precision from the serving config
        found = [Variant(f"torch {p}", local, p, {**torch_config, "precision": p}) for p in precisions]
    else:  # logged before it did: a copy with the pickled precision set
        found = [
            Variant(f"torch {p}", with_precision(local, workdir / f"model-{p}", p), p, torch_config) for p in precisions
        ]
    notes = [] if models.native_bf16() else ["torch bf16 left out: bf16 is not native on this CPU"]
    if choose:
        onnx_config = {"runtime": "onnx", **({"precision": "fp32"} if "precision" in config else {})}
        found.append(Variant("onnx", local, "fp32", onnx_config))
    else:
        notes.append('ONNX left out: the model has no model_config "runtime" to serve it from ONNX')
    label_names = list(label_names_of(Model.load(local).signature.outputs.input_names()) or ("label",))
    floor = Variant(FLOOR, trivial_model(workdir / "trivial-model", label_names), "fp32")
    return [floor, *found], "; ".join(notes)


def post(url: str, texts: list[str]) -> float:
    """Seconds for one answered prediction request (a new connection each, as independent clients make)."""
    import requests

    start = time.perf_counter()
    response = requests.post(f"{url}/invocations", json={"inputs": texts}, timeout=300)
    response.raise_for_status()
    return time.perf_counter() - start


def concurrently(clients: int, work: list[list[str]], url: str) -> tuple[list[float], float]:
    """``work`` (the requests' texts) sent by ``clients`` threads taking the next request; latencies and wall time."""
    latencies: list[float] = []
    failures: list[BaseException] = []
    queue = iter(work)
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                texts = next(queue, None)
            if texts is None:
                return
            try:
                seconds = post(url, texts)
            except Exception as error:  # noqa: BLE001 - handed to the main thread, which raises it
                failures.append(error)
                return
            with lock:
                latencies.append(seconds)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return latencies, time.perf_counter() - start


def measure(served: list[Variant], texts: list[str], singles: int, batches: int, limit_s: float) -> None:
    """Fill each variant's latencies and throughputs, interleaved between the variants."""
    chunks = [texts[i * BATCH_SIZE : (i + 1) * BATCH_SIZE] for i in range(batches)]
    for variant in served:
        post(variant.url, texts[:8])  # warm-up: the first call loads lazily initialised kernels
        variant.single = {n: [] for n in CLIENTS}
        variant.batched = {}
    # One client: request by request, with each server's CPU time over them.
    trees = {variant.name: server_processes(variant.url) for variant in served}
    cpu_before = {name: cpu_seconds(tree) for name, tree in trees.items()}
    for text in bounded(texts[:singles], limit_s):
        for variant in served:
            variant.single[1].append(post(variant.url, [text]))
    for variant in served:
        variant.cpu_per_request = (cpu_seconds(trees[variant.name]) - cpu_before[variant.name]) / len(variant.single[1])
    done: dict[str, list[float]] = {v.name: [] for v in served}
    for chunk in bounded(chunks, limit_s):
        for variant in served:
            done[variant.name].append(post(variant.url, chunk))
    for variant in served:
        variant.batched[1] = len(done[variant.name]) * BATCH_SIZE / sum(done[variant.name])
    # Eight clients: round by round, each round a burst of requests to one variant, every client busy.
    many = CLIENTS[-1]
    rounds = max(1, min(4, singles // (2 * many)))
    singles_per_round = [[text] for text in texts[: max(many, singles // rounds)]]
    batches_per_round = [chunks[i % len(chunks)] for i in range(max(many, batches // rounds))]
    wall = {v.name: 0.0 for v in served}
    finished = {v.name: 0 for v in served}
    for _ in bounded(list(range(rounds)), limit_s):
        for variant in served:
            latencies, _ = concurrently(many, singles_per_round, variant.url)
            variant.single[many].extend(latencies)
            _, seconds = concurrently(many, batches_per_round, variant.url)
            wall[variant.name] += seconds
            finished[variant.name] += len(batches_per_round) * BATCH_SIZE
    for variant in served:
        variant.batched[many] = finished[variant.name] / wall[variant.name]


def server_processes(url: str) -> list:
    """The processes of the server this process started that listens on ``url``'s port (psutil processes)."""
    import psutil

    port = int(url.rsplit(":", 1)[1])
    for child in psutil.Process().children():
        tree = [child, *child.children(recursive=True)]
        for process in tree:
            with contextlib.suppress(psutil.Error):
                if any(c.laddr and c.laddr.port == port for c in process.net_connections("inet")):
                    return tree
    raise SystemExit(f"error: no process of this benchmark listens on {url}")


def cpu_seconds(processes: list) -> float:
    """User + system CPU seconds of ``processes`` so far (those that exited count no more)."""
    import psutil

    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def request_profile(local: Path, floor: Path, text: str, requests: int) -> dict[str, float]:
    """Milliseconds of the parts of one single-text ONNX request, run in this process (no HTTP): the
    fastest of blocks of ``PROFILE_BLOCK`` calls, ``requests`` calls of each part in all.

    Each part is timed on its own, not by difference (the session's variance would swamp the small
    parts): MLflow's whole ``invocations`` call on the trivial model ``floor`` (JSON parsing, schema
    enforcement, the pyfunc wrapper, the JSON answer: MLflow's work in a request, its model's none);
    our input checks, the tokenizer with its padding, the ONNX session, our output frame and the
    spreading over skipped rows; and ``total``, MLflow's ``invocations`` call on our model. The
    session and tokenizer are the model's serving folder's, opened as the model opens them.
    """
    import mlflow
    import numpy as np
    from mlflow.pyfunc import scoring_server

    from emotion_exp import batching, onnx_runtime, threads
    from emotion_exp.pyfunc import inputs, limits

    model = mlflow.pyfunc.load_model(str(local), model_config={"runtime": "onnx"})
    trivial = mlflow.pyfunc.load_model(str(floor))
    python_model = model.unwrap_python_model()
    schema, trivial_schema = model.metadata.get_input_schema(), trivial.metadata.get_input_schema()
    session, tokenizer = onnx_runtime.open_serving_folder(
        local / _flavor(local)["artifacts"]["onnx"]["path"], "onnx", threads.available_cores()
    )
    max_length, batch_size = python_model.max_length, python_model.batch_size
    body = json.dumps({"inputs": [text]})
    frame = scoring_server.infer_and_parse_data(json.loads(body), schema)
    tokenized = batching.tokenize([text], tokenizer, max_length)
    _, padded = next(batching.sorted_batches(tokenized, tokenizer, batch_size, tensors="np"))
    feeds = {name: np.asarray(padded[name], dtype=np.int64) for name in ("input_ids", "attention_mask")}
    probabilities = onnx_runtime.run(session, tokenizer, [text], max_length=max_length, batch_size=batch_size)
    answer = inputs.predictions_frame(probabilities.probabilities, tokenizer.label_names)
    keep = np.ones(1, dtype=bool)

    def tokenizer_and_padding() -> None:
        batched = batching.tokenize([text], tokenizer, max_length)
        next(batching.sorted_batches(batched, tokenizer, batch_size, tensors="np"))

    parts = {
        "mlflow: a request to the trivial model": lambda: scoring_server.invocations(
            body, "application/json", trivial, trivial_schema
        ),
        "ours: input checks": lambda: inputs.texts_from_input(frame, max_chars=limits.max_chars({})),
        "ours: tokenizer and padding": tokenizer_and_padding,
        "onnx session": lambda: session.session.run(None, feeds),
        "ours: output frame": lambda: inputs.predictions_frame(probabilities.probabilities, tokenizer.label_names),
        "ours: skipped rows": lambda: inputs.with_skipped_rows(answer, keep),
        "total": lambda: scoring_server.invocations(body, "application/json", model, schema),
    }
    # Blocks of calls to each part in turn; the fastest block counts (the machine's load only ever adds time).
    ms = dict.fromkeys(parts, float("inf"))
    for round_ in range(max(2, requests // PROFILE_BLOCK) + 1):  # the first round warms up
        for name, part in parts.items():
            start = time.perf_counter()
            for _ in range(PROFILE_BLOCK):
                part()
            if round_:
                ms[name] = min(ms[name], (time.perf_counter() - start) / PROFILE_BLOCK * 1000)
    measured = sum(value for name, value in ms.items() if name != "total")
    return {**ms, "rest (total - the parts above)": ms["total"] - measured}


def _flavor(folder: Path) -> dict:
    from mlflow.models import Model

    return Model.load(folder).flavors["python_function"]


def peak_line(local: Path, texts: list[str], served: list[Variant], batch_size: int) -> str:
    """Each variant's 1-client batched throughput as GFLOP/s and share of the all-core matmul peak in its precision."""
    from mlflow.models import Model
    from transformers import AutoConfig, AutoTokenizer

    from benchmarks import peak
    from emotion_exp import threads

    artifacts = Model.load(local).flavors["python_function"]["artifacts"]
    folder = local / artifacts[python_model(local).ARTIFACT]["path"]  # the encoder's save_pretrained folder
    per_text = peak.flops_per_text(
        AutoTokenizer.from_pretrained(folder), AutoConfig.from_pretrained(folder), texts, batch_size=batch_size
    )
    cores = threads.available_cores()
    machine_peak = peak.matmul_peak(cores)
    cells = "; ".join(
        f"{v.name} {peak.achieved(v.batched[1], per_text, machine_peak, v.precision, cores)}"
        for v in served
        if v.name != FLOOR
    )
    return f"matmul peak GFLOP/s: {peak.describe(machine_peak)}; batched, 1 client: {cells}"


def serve_all(served: list[Variant], workdir: Path, block: Callable[[], None]) -> None:
    """Start every variant's server, run ``block`` while all answer, stop them."""
    import contextlib
    import os

    from emotion_exp.serving import local_server, model_server_command

    with contextlib.ExitStack() as stack:
        for variant in served:
            env = dict(os.environ)
            if variant.serving_config:
                env["SERVING_MODEL_CONFIG"] = json.dumps(variant.serving_config)
            log = workdir / f"server-{variant.name.replace(' ', '-')}.log"
            variant.url = stack.enter_context(
                local_server(model_server_command(str(variant.folder)), "/ping", log, env=env)
            )
        block()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_arguments(parser)
    args = parser.parse_args()
    singles, batches, limit_s = (16, 2, 30.0) if args.quick else (200, 16, 120.0)
    load_before = os.getloadavg()

    with harness.store(args.track, model_uri=args.model_uri) as workdir:
        import mlflow

        from emotion_exp import models

        uri = harness.model_uri(args, workdir)
        local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(workdir / "downloaded")))
        texts = harness.sample(max(singles, batches * BATCH_SIZE))["text"].tolist()
        served, note = variants(local, workdir)
        serve_all(served, workdir, lambda: measure(served, texts, singles, batches, limit_s))
        batch_size = getattr(python_model(local), "batch_size", BATCH_SIZE)  # the model splits requests into these
        of_peak = peak_line(local, texts[: batches * BATCH_SIZE], served, batch_size)
        profiled = (
            request_profile(local, served[0].folder, texts[0], PROFILE_REQUESTS // (4 if args.quick else 1))
            if "onnx" in _flavor(local)["artifacts"]
            else {}
        )
    load_after = os.getloadavg()

    print(f"cpu: {models.cpu_description()}")
    print(f"load average (1 min): {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"model: {uri}; servers: `mlflow models serve --env-manager local` on 127.0.0.1, one worker each")
    if note:
        print(note)
    width = max(len(v.name) for v in served) + 2
    header = "".join(f"{clients(n) + ' p50/p95/p99 ms':>30}" for n in CLIENTS)
    print(f"\n{'single text':<{width}}{header}{'server CPU ms/request':>24}")
    for v in served:
        cells = "".join(
            f"{' / '.join(f'{harness.percentile(v.single[n], q) * 1000:.1f}' for q in (50, 95, 99)):>30}"
            for n in CLIENTS
        )
        counts = ", ".join(str(len(v.single[n])) for n in CLIENTS)
        print(f"{v.name:<{width}}{cells}{v.cpu_per_request * 1000:>24.1f}  ({counts} requests)")
    print(f"\n{str(BATCH_SIZE) + ' texts':<{width}}" + "".join(f"{clients(n) + ' texts/s':>30}" for n in CLIENTS))
    for v in served:
        print(f"{v.name:<{width}}" + "".join(f"{v.batched[n]:>30.1f}" for n in CLIENTS))
    print(of_peak)
    p50 = {v.name: harness.percentile(v.single[1], 50) * 1000 for v in served}
    if profiled:
        print(f"\none ONNX request, in this process (ms, the fastest of blocks of {PROFILE_BLOCK} calls):")
        for part, milliseconds in profiled.items():
            print(f"  {part:<42}{milliseconds:>7.2f}")
        print(f"  {'HTTP and client (served p50 - total)':<42}{p50['onnx'] - profiled['total']:>7.2f}")
        trivial = profiled["mlflow: a request to the trivial model"]
        print(
            f"MLflow's floor served (the trivial model, p50): {p50[FLOOR]:.1f} ms, of which its HTTP and client "
            f"{p50[FLOOR] - trivial:.1f} ms"
        )
    if "onnx" in p50:
        verdict = "met" if p50["onnx"] <= ONNX_P50_GOAL_MS else "not met"
        print(f"\nONNX single-text p50: {p50['onnx']:.1f} ms (goal at most {ONNX_P50_GOAL_MS:g}: {verdict})")
        for name in ("torch fp32", "torch bf16"):
            if name in p50:
                ratio = p50[name] / p50["onnx"]
                verdict = "met" if ratio <= TORCH_OVER_ONNX_GOAL else "not met"
                print(f"{name} single-text p50 / ONNX's: {ratio:.2f} (goal at most {TORCH_OVER_ONNX_GOAL}: {verdict})")
    if args.track:
        metrics = {}
        for v in served:
            key = v.name.replace(" ", "_")
            for n in CLIENTS:
                for q in (50, 95, 99):
                    metrics[f"{key}_{n}_clients_p{q}_ms"] = harness.percentile(v.single[n], q) * 1000
                metrics[f"{key}_{n}_clients_texts_per_second"] = v.batched[n]
            metrics[f"{key}_server_cpu_ms_per_request"] = v.cpu_per_request * 1000
        metrics |= {f"profile_{re.sub('[^a-z0-9]+', '_', part).strip('_')}_ms": ms for part, ms in profiled.items()}
        harness.log(
            "serve",
            {
                "model_uri": uri,
                "variants": ", ".join(v.name for v in served),
                "single_requests": len(served[0].single[1]),
                "batch_size": BATCH_SIZE,
                "cpu": models.cpu_description(),
            },
            metrics,
        )


def clients(count: int) -> str:
    return f"{count} client{'s' * (count > 1)}"


def python_model(folder: Path) -> object:
    """The model object pickled in the pyfunc model folder ``folder`` (not loaded: no weights)."""
    import cloudpickle

    with _pickled_model(folder).open("rb") as file:
        return cloudpickle.load(file)


if __name__ == "__main__":
    main()
