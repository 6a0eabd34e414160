"""REST serving overhead: `mlflow models serve` on loopback against the same model in-process.

Starts the real server (``--env-manager local``) on a free loopback port and measures, with a
bounded number of requests and a time limit: single-text latency (p50/p99) and batched
throughput (64 texts a request), each interleaved request by request with the same call on
the model loaded in this process, so that other load on the machine hits both alike.

    python benchmarks/serve.py [--quick] [--track] [--model-uri URI] [--model SPEC]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _model  # noqa: E402

BATCH_SIZE = 64
START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def started_server(uri: str, workdir: Path) -> tuple[subprocess.Popen, str]:
    """Start the server and wait (bounded) until /ping answers."""
    import requests

    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = (workdir / "server.log").open("w")
    process = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return process, url
        except requests.ConnectionError:
            time.sleep(0.5)
    stop(process)
    raise SystemExit(f"the server did not answer /ping:\n{(workdir / 'server.log').read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def bounded(items: list, seconds: float) -> Iterator:
    """Yield items until they run out or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    for item in items:
        if time.monotonic() > deadline:
            return
        yield item


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model.add_arguments(parser)
    args = parser.parse_args()
    singles, batches, limit_s = (20, 4, 30.0) if args.quick else (200, 20, 120.0)

    with _model.store(args.track, model_uri=args.model_uri) as workdir:
        import mlflow
        import pandas as pd
        import requests

        from emotion_exp import models

        uri = _model.model_uri(args, workdir)
        texts = _model.texts(max(singles, batches * BATCH_SIZE))
        model = mlflow.pyfunc.load_model(uri)
        process, url = started_server(uri, workdir)
        try:
            session = requests.Session()

            def served(batch: list[str]) -> float:
                start = time.perf_counter()
                response = session.post(f"{url}/invocations", json={"inputs": batch}, timeout=120)
                response.raise_for_status()
                return time.perf_counter() - start

            def local(batch: list[str]) -> float:
                start = time.perf_counter()
                model.predict(pd.DataFrame({"text": batch}))
                return time.perf_counter() - start

            served(texts[:8]), local(texts[:8])  # warm-up
            single = {"served": [], "local": []}
            for text in bounded(texts[:singles], limit_s):
                single["served"].append(served([text]))
                single["local"].append(local([text]))
            batched = {"served": [], "local": []}
            chunks = [texts[i * BATCH_SIZE : (i + 1) * BATCH_SIZE] for i in range(batches)]
            for chunk in bounded(chunks, limit_s):
                batched["served"].append(served(chunk))
                batched["local"].append(local(chunk))
        finally:
            stop(process)

    p50 = {k: _model.percentile(v, 50) * 1000 for k, v in single.items()}
    p99 = {k: _model.percentile(v, 99) * 1000 for k, v in single.items()}
    rate = {k: len(v) * BATCH_SIZE / sum(v) for k, v in batched.items()}
    print(f"cpu: {models.cpu_description()}")
    print(f"model: {uri}; {len(single['served'])} single-text requests, "
          f"{len(batched['served'])} requests of {BATCH_SIZE} texts")
    print(f"single text  p50 / p99: served {p50['served']:7.1f} / {p99['served']:7.1f} ms, "
          f"in-process {p50['local']:7.1f} / {p99['local']:7.1f} ms")
    print(f"batched ({BATCH_SIZE}): served {rate['served']:7.1f} texts/s, in-process {rate['local']:7.1f} texts/s")
    print(f"serving overhead: single-text p50 {p50['served'] / p50['local']:.2f}x the in-process latency "
          f"(+{p50['served'] - p50['local']:.1f} ms); "
          f"batched throughput {rate['served'] / rate['local']:.2f}x in-process")
    if args.track:
        _model.log(
            "serve",
            {"model_uri": uri, "single_requests": len(single["served"]), "batch_requests": len(batched["served"]),
             "batch_size": BATCH_SIZE, "cpu": models.cpu_description()},
            {"served_p50_ms": p50["served"], "served_p99_ms": p99["served"], "local_p50_ms": p50["local"],
             "local_p99_ms": p99["local"], "served_texts_per_second": rate["served"],
             "local_texts_per_second": rate["local"], "latency_overhead_ratio": p50["served"] / p50["local"]},
        )


if __name__ == "__main__":
    main()
