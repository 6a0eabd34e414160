"""REST serving overhead: `mlflow models serve` on loopback against the same model in-process.

Starts the real server (``--env-manager local``) on a free loopback port (``emotion_exp.serving``) and measures, with a
bounded number of requests and a time limit: single-text latency (p50/p99) and batched
throughput (64 texts a request), each interleaved request by request with the same call on
the model loaded in this process, so that other load on the machine hits both alike.

    python -m benchmarks.serve [--quick] [--track] [--model-uri URI] [--model SPEC]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

from benchmarks import harness
from emotion_exp.serving import local_server, model_server_command

BATCH_SIZE = 64


def bounded(items: list, seconds: float) -> Iterator:
    """Yield items until they run out or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    for item in items:
        if time.monotonic() > deadline:
            return
        yield item


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_arguments(parser)
    args = parser.parse_args()
    singles, batches, limit_s = (20, 4, 30.0) if args.quick else (200, 20, 120.0)

    with harness.store(args.track, model_uri=args.model_uri) as workdir:
        import mlflow
        import pandas as pd
        import requests

        from emotion_exp import models

        uri = harness.model_uri(args, workdir)
        texts = harness.sample(max(singles, batches * BATCH_SIZE))["text"].tolist()
        model = mlflow.pyfunc.load_model(uri)

        with local_server(model_server_command(uri), "/ping", workdir / "server.log") as url:
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

        rate = {k: len(v) * BATCH_SIZE / sum(v) for k, v in batched.items()}
        model_batch = model.unwrap_python_model().batch_size  # the model splits each request into these
        of_peak = harness.share_of_peak(uri, texts[: batches * BATCH_SIZE], rate, batch_size=model_batch)

    p50 = {k: harness.percentile(v, 50) * 1000 for k, v in single.items()}
    p99 = {k: harness.percentile(v, 99) * 1000 for k, v in single.items()}
    print(f"cpu: {models.cpu_description()}")
    print(
        f"model: {uri}; {len(single['served'])} single-text requests, "
        f"{len(batched['served'])} requests of {BATCH_SIZE} texts"
    )
    print(
        f"single text  p50 / p99: served {p50['served']:7.1f} / {p99['served']:7.1f} ms, "
        f"in-process {p50['local']:7.1f} / {p99['local']:7.1f} ms"
    )
    print(f"batched ({BATCH_SIZE}): served {rate['served']:7.1f} texts/s, in-process {rate['local']:7.1f} texts/s")
    print(of_peak)
    print(
        f"serving overhead: single-text p50 {p50['served'] / p50['local']:.2f}x the in-process latency "
        f"(+{p50['served'] - p50['local']:.1f} ms); "
        f"batched throughput {rate['served'] / rate['local']:.2f}x in-process"
    )
    if args.track:
        harness.log(
            "serve",
            {
                "model_uri": uri,
                "single_requests": len(single["served"]),
                "batch_requests": len(batched["served"]),
                "batch_size": BATCH_SIZE,
                "cpu": models.cpu_description(),
            },
            {
                "served_p50_ms": p50["served"],
                "served_p99_ms": p99["served"],
                "local_p50_ms": p50["local"],
                "local_p99_ms": p99["local"],
                "served_texts_per_second": rate["served"],
                "local_texts_per_second": rate["local"],
                "latency_overhead_ratio": p50["served"] / p50["local"],
            },
        )


if __name__ == "__main__":
    main()
