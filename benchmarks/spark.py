"""Texts/s of in-process prediction against Spark ``local[2]`` scoring of the same model and texts.

The local engine's loop (``predict_batches``) runs in this process; Spark scores the same texts,
read from a Parquet file, through ``emotion_exp.spark.score`` (``mlflow.pyfunc.spark_udf``).
Spark's fixed costs are reported apart: the session start, and the first pass (Python workers
start and load the model); later passes show the steady rate. Spark writes to its ``noop``
sink, so no output file is timed.

    python -m benchmarks.spark [--quick] [--track] [--tfidf | --model-uri URI | --model SPEC] [--master local[2]]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchmarks import harness


def tfidf_model_uri() -> str:
    """A TF-IDF model fitted on the bundled sample (seconds): the cheapest model, so Spark's overhead shows most."""
    from emotion_exp.config import TfidfConfig
    from emotion_exp.stages import tfidf

    return f"runs:/{tfidf.run(TfidfConfig())}/tfidf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_arguments(parser)
    parser.add_argument("--tfidf", action="store_true", help="Measure a TF-IDF model instead of a fine-tuned encoder.")
    parser.add_argument("--master", default="local[2]", help="Spark master (default local[2]).")
    args = parser.parse_args()
    count, passes = (2000, 2) if args.quick else (20_000, 3)

    with harness.store(args.track, model_uri=args.model_uri) as workdir:
        import mlflow
        import pandas as pd

        from emotion_exp import spark
        from emotion_exp.stages.predict import predict_batches

        uri = tfidf_model_uri() if args.tfidf and not args.model_uri else harness.model_uri(args, workdir)
        texts = harness.sample(count)["text"].tolist()
        source = workdir / "texts.parquet"
        pd.DataFrame({"text": texts}).to_parquet(source)

        start = time.perf_counter()
        model = mlflow.pyfunc.load_model(uri)
        local_load = time.perf_counter() - start
        start = time.perf_counter()
        predict_batches(model, texts, 64)
        local_rate = count / (time.perf_counter() - start)

        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        from pyspark.sql import SparkSession

        start = time.perf_counter()
        session = SparkSession.builder.master(args.master).config("spark.ui.enabled", "false").getOrCreate()
        session.sparkContext.setLogLevel("ERROR")
        session_seconds = time.perf_counter() - start
        frame = spark.read_texts(session, source)
        seconds = []
        for _ in range(passes):
            start = time.perf_counter()
            spark.score(frame, uri).write.format("noop").mode("overwrite").save()
            seconds.append(time.perf_counter() - start)
        session.stop()
        steady = count / min(seconds[1:])
        rates = {"local": local_rate, "spark": steady}
        of_peak = (
            ""
            if args.tfidf
            else harness.share_of_peak(uri, texts, rates, batch_size=model.unwrap_python_model().batch_size)
        )

    print(f"model {uri} ({'tf-idf' if args.tfidf else args.model}); {count:,} texts; Spark {args.master}")
    print(f"local in-process: model load {local_load:.1f} s, {local_rate:,.0f} texts/s")
    print(
        f"spark: session start {session_seconds:.1f} s, first pass {seconds[0]:.1f} s "
        f"({count / seconds[0]:,.0f} texts/s), later passes {steady:,.0f} texts/s"
    )
    print(f"spark steady / local: {steady / local_rate:.2f}x")
    if of_peak:
        print(of_peak)
    if args.track:
        harness.log(
            "spark",
            {"texts": count, "master": args.master, "model_uri": uri},
            {
                "local_texts_per_second": local_rate,
                "spark_texts_per_second": steady,
                "spark_session_seconds": session_seconds,
                "spark_first_pass_seconds": seconds[0],
            },
        )


if __name__ == "__main__":
    main()
