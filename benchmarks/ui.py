"""How soon the MLflow UI answers: `mlflow ui` with MLflow's defaults against the command the study's summary prints.

Each round starts both, one after the other on the same store, and times the start to the first answer
of `/health`; it counts the processes of each (with `--workers 1` and no job runner, two) and the
`StarletteDeprecationWarning` lines each printed by then. The ratio is of the two in the same round.

    python -m benchmarks.ui [--tracking-uri sqlite:///mlflow.db] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from emotion_exp import console
from emotion_exp.serving import local_server


def started(command: list[str], env: dict[str, str], folder: Path) -> tuple[float, int, int]:
    """Seconds until ``command`` (given its port) answers ``/health``, its processes and its warning lines then."""
    log = folder / "ui.log"
    began = time.perf_counter()
    with local_server(lambda port: [*command, "--port", str(port)], "/health", log, env=env) as address:
        seconds = time.perf_counter() - began
        processes = len(_group_of(f"--port\0{address.rsplit(':', 1)[1]}\0"))
    return seconds, processes, log.read_text().count("StarletteDeprecationWarning")


def _group_of(argument: str) -> list[int]:
    """The processes in the process group of the one whose command line holds ``argument`` (Linux's /proc)."""
    groups = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                groups[int(entry.name)] = (os.getpgid(int(entry.name)), (entry / "cmdline").read_text())
            except (ProcessLookupError, FileNotFoundError, PermissionError):  # gone, or not ours to read
                continue
    leaders = {group for group, line in groups.values() if argument in line}
    return [pid for pid, (group, _) in groups.items() if group in leaders]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    settings, printed = console.ui_invocation(args.tracking_uri, 0)
    printed = printed[: printed.index("--port")] + printed[printed.index("--port") + 2 :]  # the port comes per start
    plain = ["mlflow", "ui", "--backend-store-uri", console.store_uri(args.tracking_uri)]
    env = {name: value for name, value in os.environ.items() if name not in settings}
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores")
    for round_number in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory() as folder:
            defaults = started(plain, env, Path(folder))
            summarys = started(printed, {**env, **settings}, Path(folder))
        for name, (seconds, processes, warnings) in (("MLflow's defaults", defaults), ("the summary's", summarys)):
            print(f"round {round_number}: {name}: {seconds:.1f} s, {processes} processes, {warnings} warning lines")
        print(f"round {round_number}: the summary's command answered {defaults[0] / summarys[0]:.1f}x sooner")


if __name__ == "__main__":
    main()
