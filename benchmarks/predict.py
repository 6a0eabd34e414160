"""Prediction against extraction and against transformers' text-classification pipeline.

All run the same saved fine-tuned model on the same texts in this process with the batch size
and max length the pyfunc model was logged with. The pyfunc model sorts texts by length before batching and
uses bf16 where the CPU runs it natively; the pipeline batches in input order, in fp32 by
default; it is also timed under bf16 autocast so the two effects can be told apart. Extraction
(the same encoder weights, precision and threads, pooled [CLS] states) is the speed prediction
should reach (goal 0.9x); the ``predict`` stage labels the same texts from a CSV file into a CSV
file, reading, model loading and writing included (goal 0.8x of the pyfunc model).

    python -m benchmarks.predict [--quick] [--track] [--model-uri URI] [--model SPEC]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from benchmarks import harness, peak
from emotion_exp.threads import prefer_passive_openmp


def texts_per_second(
    contenders: dict[str, Callable[[list[str]], object]], texts: list[str], repeats: int
) -> dict[str, float]:
    """Median texts/s of each contender over ``repeats`` passes, after a warm-up on a few texts.

    The passes are interleaved (one of each per round) so that load from other processes on
    the machine slows every contender alike instead of whichever happened to run at the time.
    """
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for predict in contenders.values():
        predict(texts[:16])
    for _ in range(repeats):
        for name, predict in contenders.items():
            start = time.perf_counter()
            predict(texts)
            rates[name].append(len(texts) / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_arguments(parser)
    args = parser.parse_args()
    prefer_passive_openmp()  # as the CLI does, before torch loads
    count, repeats = (256, 2) if args.quick else (1000, 5)

    with harness.store(args.track, model_uri=args.model_uri) as workdir:
        import mlflow
        import pandas as pd
        import torch
        from mlflow.pyfunc import PythonModelContext
        from transformers import AutoModel, AutoTokenizer, pipeline

        from emotion_exp import features, models
        from emotion_exp.config import PredictConfig
        from emotion_exp.pyfunc import TransformerClassifier
        from emotion_exp.stages import predict

        uri = harness.model_uri(args, workdir)
        texts = harness.sample(count)["text"].tolist()
        model = mlflow.pyfunc.load_model(uri)
        folder = harness.classifier_folder(uri)
        logged = model.unwrap_python_model()
        batch_size, max_length = logged.batch_size, logged.max_length
        pipe = pipeline("text-classification", model=str(folder), tokenizer=str(folder), device="cpu", top_k=None)

        def run_pipeline(batch: list[str]) -> list:
            return pipe(batch, batch_size=batch_size, truncation=True, max_length=max_length)

        def run_pipeline_bf16(batch: list[str]) -> list:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return run_pipeline(batch)

        def run_pyfunc(batch: list[str]) -> pd.DataFrame:
            return model.predict(pd.DataFrame({"text": batch}))

        # The same model class forced to fp32: tells the batching gain from the precision's.
        fp32 = TransformerClassifier(max_length=max_length, batch_size=batch_size, precision="fp32")
        fp32.load_context(PythonModelContext({TransformerClassifier.ARTIFACT: str(folder)}, {}))

        def run_pyfunc_fp32(batch: list[str]) -> pd.DataFrame:
            return fp32.predict(None, pd.DataFrame({"text": batch}))

        encoder = features.encoder_from(
            AutoTokenizer.from_pretrained(folder),
            AutoModel.from_pretrained(folder),
            models.resolve_precision(logged.precision),
            getattr(logged, "threads", "auto"),  # models logged before --threads
        )

        def run_extraction(batch: list[str]) -> object:
            return features.extract(batch, encoder, max_length=max_length, batch_size=batch_size, progress=False)

        source = workdir / "texts.csv"

        def run_stage(batch: list[str]) -> object:
            pd.DataFrame({"text": batch}).to_csv(source, index=False)
            return predict.run(PredictConfig(input=str(source), model_uri=uri, batch_size=batch_size, overwrite=True))

        rates = texts_per_second(
            {
                "extraction": run_extraction,
                "pyfunc": run_pyfunc,
                "predict_stage": run_stage,
                "pyfunc_fp32": run_pyfunc_fp32,
                "pipeline": run_pipeline,
                "pipeline_bf16": run_pipeline_bf16,
            },
            texts,
            repeats,
        )
        ours, theirs, theirs_bf16 = rates["pyfunc"], rates["pipeline"], rates["pipeline_bf16"]
        ours_labels = run_pyfunc(texts[:256])["label"].tolist()
        their_labels = [max(scores, key=lambda s: s["score"])["label"] for scores in run_pipeline(texts[:256])]
        agreement = sum(a == b for a, b in zip(ours_labels, their_labels)) / len(ours_labels)

        precision = models.resolve_precision(logged.precision)
        machine_peak = peak.matmul_peak(encoder.threads)
        flops_per_text = peak.flops_per_text(
            encoder.tokenizer, encoder.model.config, texts, max_length=max_length, batch_size=batch_size
        )
        print(f"cpu: {models.cpu_description()}; threads: extraction {encoder.threads}, pyfunc {logged.threads_used}")
        print(f"model: {uri}; {count} texts, batch size {batch_size}, max length {max_length}, median of {repeats}")
        print(f"matmul peak GFLOP/s: {peak.describe(machine_peak)}")
        for name in ("extraction", "pyfunc"):
            gflops = flops_per_text * rates[name] / 1e9
            share = peak.share(gflops, machine_peak, precision, encoder.threads)
            print(f"{name} ({precision}): {rates[name]:8.1f} texts/s, {gflops:.1f} GFLOP/s, {share:.0%} of peak")
        print(
            f"pyfunc / extraction: {ours / rates['extraction']:.2f}x (goal 0.9x); predict stage, file to file: "
            f"{rates['predict_stage']:.1f} texts/s, {rates['predict_stage'] / ours:.2f}x of pyfunc (goal 0.8x)"
        )
        print(f"pyfunc (length-sorted batches, precision auto -> {precision}): {ours:8.1f} texts/s")
        print(f"pyfunc, same class forced to fp32:                           {rates['pyfunc_fp32']:8.1f} texts/s")
        print(f"transformers pipeline, fp32:                                  {theirs:8.1f} texts/s")
        print(f"transformers pipeline, bf16 autocast:                         {theirs_bf16:8.1f} texts/s")
        print(f"ratio pyfunc / pipeline fp32: {ours / theirs:.2f}x; pyfunc / pipeline bf16: {ours / theirs_bf16:.2f}x")
        print(f"same label as the fp32 pipeline on {agreement:.1%} of {len(ours_labels)} texts")
        if args.track:
            harness.log(
                "predict",
                {
                    "model_uri": uri,
                    "texts": count,
                    "repeats": repeats,
                    "batch_size": batch_size,
                    "cpu": models.cpu_description(),
                },
                {
                    "pyfunc_texts_per_second": ours,
                    "pipeline_texts_per_second": theirs,
                    "pipeline_bf16_texts_per_second": theirs_bf16,
                    "pyfunc_fp32_texts_per_second": rates["pyfunc_fp32"],
                    "extraction_texts_per_second": rates["extraction"],
                    "predict_stage_texts_per_second": rates["predict_stage"],
                    "ratio_vs_pipeline": ours / theirs,
                    "label_agreement": agreement,
                },
            )


if __name__ == "__main__":
    main()
