"""Cold start and install size of the served fine-tuned model: torch against its ONNX export without torch.

``python -m benchmarks.cold_start [--model-folder DIR] [--repeats 3]``

Two virtual environments under ``~/.cache/emotion-exp/venvs``: one with only the model's
``artifacts/onnx/requirements.txt`` (the ``[onnx-serve]`` extra, pinned: no torch), one with its
``requirements.txt`` (torch, transformers; torch from this machine's CPU wheel where it has one).
For each, ``mlflow models serve --env-manager local`` starts on a loopback port, and the time from
the process start to the first answer of ``/invocations`` (one text) is measured; the install size
is ``du`` of the environment's site-packages. Without ``--model-folder`` the packaged encoder gets
an untrained six-label head (start-up does not depend on how well it learned), logged as the
finetune stage logs it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from emotion_exp.serving import free_port

LABELS = ("sadness", "joy", "love", "anger", "fear", "surprise")
CPU_TORCH_WHEELS = Path("/opt/wheels")


def venv_with(requirements: Path) -> Path:
    """A virtual environment with ``requirements`` installed, built once under ``~/.cache/emotion-exp/venvs``.

    Named by the requirements' digest, as tests/test_onnx_serving.py names its own: they share it.
    """
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    venv = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "emotion-exp" / "venvs" / digest
    if (venv / "complete").exists():
        return venv
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    local_torch = sorted(CPU_TORCH_WHEELS.glob("torch-*+cpu-*.whl"))
    if "torch" in requirements.read_text() and local_torch:  # the CPU build, not a CUDA one from the index
        subprocess.run([*pip, str(local_torch[-1])], check=True)
    subprocess.run([*pip, "-r", str(requirements)], check=True)
    (venv / "complete").write_text(requirements.read_text())
    return venv


def site_packages_mb(venv: Path) -> float:
    folder = next((venv / "lib").glob("python*/site-packages"))
    return (
        int(subprocess.run(["du", "-sk", str(folder)], check=True, capture_output=True, text=True).stdout.split()[0])
        / 1024
    )


def cold_start_s(venv: Path, model_folder: Path, log: Path, runtime: str = "auto") -> float:
    """Seconds from starting ``mlflow models serve`` to its first answer to one text."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "PYTHON"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    env["SERVING_MODEL_CONFIG"] = f'{{"runtime": "{runtime}"}}'
    command = [str(venv / "bin" / "mlflow"), "models", "serve", "-m", str(model_folder), "--env-manager", "local"]
    start = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(
            [*command, "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        while time.perf_counter() - start < 300:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
            try:
                answer = requests.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": ["hello"]}, timeout=60)
                if answer.ok:
                    return time.perf_counter() - start
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"no answer after 300 s: {log.read_text()[-2000:]}")
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


def untrained_model(folder: Path) -> Path:
    """The packaged encoder with an untrained six-label head, saved as a pyfunc model the finetune stage logs."""
    import mlflow
    from transformers import AutoModelForSequenceClassification

    from emotion_exp import models, pyfunc
    from emotion_exp.config import DEFAULT_MODEL

    resolved = models.resolve(DEFAULT_MODEL)
    classifier = folder / "checkpoint" / "classifier"
    model = AutoModelForSequenceClassification.from_pretrained(
        resolved.location, num_labels=len(LABELS), id2label=dict(enumerate(LABELS))
    )
    model.save_pretrained(classifier)
    models.load_tokenizer(resolved).save_pretrained(classifier)
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    with mlflow.start_run():
        uri = pyfunc.log_model(
            pyfunc.TransformerClassifier(),
            LABELS,
            artifacts=pyfunc.TransformerClassifier.serving_artifacts(classifier),
            packages=("torch", "transformers", "onnxruntime"),
        )
    return Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(folder / "model")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-folder", type=Path, help="A downloaded fine-tuned pyfunc model (with artifacts/onnx).")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="emotion-cold-") as work:
        folder = args.model_folder or untrained_model(Path(work))
        environments = {
            "onnx (no torch)": (venv_with(folder / "artifacts" / "onnx" / "requirements.txt"), "auto"),
            "torch": (venv_with(folder / "requirements.txt"), "torch"),
            "torch env, runtime onnx": (venv_with(folder / "requirements.txt"), "onnx"),
        }
        print(f"load before: {Path('/proc/loadavg').read_text().strip()}")
        print("| environment | site-packages (MB) | cold start to first answer (s), median | all (s) |")
        print("|---|---:|---:|---|")
        for name, (venv, runtime) in environments.items():
            times = [cold_start_s(venv, folder, Path(work) / "server.log", runtime) for _ in range(args.repeats)]
            shown = ", ".join(f"{t:.1f}" for t in times)
            print(f"| {name} | {site_packages_mb(venv):,.0f} | {statistics.median(times):.1f} | {shown} |")
        print(f"load after: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
