"""Serving latency and throughput: torch fp32, torch bf16 (where native) and ONNX Runtime, each behind a real
`mlflow models serve` on loopback, with one and with eight concurrent clients.

One model (``--model-uri``, or a brief fine-tune of ``--model``) is served in variants: a copy whose
logged ``precision`` is set to fp32, one set to bf16 (only where the CPU runs bf16 natively; by the
model_config ``precision`` where the model has it), and,
where the model can choose its runtime (model_config ``runtime``), the model with
``SERVING_MODEL_CONFIG='{"runtime": "onnx"}'``. All servers run at once (``--env-manager local``,
MLflow's one worker), so load on the machine hits all alike: one client's requests go to the
variants in turn, request by request; the eight clients' rounds go to the variants in turn, round
by round. Measured: single-text latency (p50/p95/p99) and throughput of requests of 64 texts, each
with a bounded number of requests and a time limit.

    python -m benchmarks.serve [--quick] [--track] [--model-uri URI] [--model SPEC]
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import harness

BATCH_SIZE = 64
CLIENTS = (1, 8)
ONNX_GOAL = 0.5
"""Issue 25: ONNX's single-text p50 at most half of torch fp32's (on a CPU without native bf16)."""


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
    from mlflow.models import Model

    return folder / Model.load(folder).flavors["python_function"]["python_model"]


def variants(local: Path, workdir: Path) -> tuple[list[Variant], str]:
    """The variants to serve here, and a note on any left out."""
    from mlflow.models import Model

    from emotion_exp import models

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
        found.append(
            Variant(
                "onnx", local, "fp32", {"runtime": "onnx", **({"precision": "fp32"} if "precision" in config else {})}
            )
        )
    else:
        notes.append('ONNX left out: the model has no model_config "runtime" to serve it from ONNX')
    return found, "; ".join(notes)


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
    # One client: request by request.
    for text in bounded(texts[:singles], limit_s):
        for variant in served:
            variant.single[1].append(post(variant.url, [text]))
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
        f"{v.name} {peak.achieved(v.batched[1], per_text, machine_peak, v.precision, cores)}" for v in served
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

    print(f"cpu: {models.cpu_description()}")
    print(f"model: {uri}; servers: `mlflow models serve --env-manager local` on 127.0.0.1, one worker each")
    if note:
        print(note)
    header = "".join(f"{clients(n) + ' p50/p95/p99 ms':>30}" for n in CLIENTS)
    print(f"\n{'single text':<12}{header}")
    for v in served:
        cells = "".join(
            f"{' / '.join(f'{harness.percentile(v.single[n], q) * 1000:.1f}' for q in (50, 95, 99)):>30}"
            for n in CLIENTS
        )
        print(f"{v.name:<12}{cells}  ({', '.join(str(len(v.single[n])) for n in CLIENTS)} requests)")
    print(f"\n{str(BATCH_SIZE) + ' texts':<12}" + "".join(f"{clients(n) + ' texts/s':>30}" for n in CLIENTS))
    for v in served:
        print(f"{v.name:<12}" + "".join(f"{v.batched[n]:>30.1f}" for n in CLIENTS))
    print(of_peak)
    p50 = {v.name: harness.percentile(v.single[1], 50) for v in served}
    if "onnx" in p50:
        ratio = p50["onnx"] / p50["torch fp32"]
        verdict = "met" if ratio <= ONNX_GOAL else "not met"
        print(f"ONNX single-text p50 / torch fp32's: {ratio:.2f} (goal at most {ONNX_GOAL}: {verdict})")
        if "torch bf16" in p50:
            print(f"ONNX single-text p50 / torch bf16's: {p50['onnx'] / p50['torch bf16']:.2f} (goal at most 1)")
    if args.track:
        metrics = {}
        for v in served:
            key = v.name.replace(" ", "_")
            for n in CLIENTS:
                for q in (50, 95, 99):
                    metrics[f"{key}_{n}_clients_p{q}_ms"] = harness.percentile(v.single[n], q) * 1000
                metrics[f"{key}_{n}_clients_texts_per_second"] = v.batched[n]
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
