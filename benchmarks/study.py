"""How long the README's first command takes here: the whole study on the bundled sample.

Runs ``mlflow run . --env-manager local`` (any ``-P key=value`` given is passed on) in a fresh
folder with its own sqlite store, and prints wall time, the CPU time of the study's processes,
their peak memory, the CPU and the load average before and after. On a machine shared with
other jobs the wall time grows with the load; the CPU time barely does, so it says what a quiet
machine of the same kind needs (wall time there is about CPU time divided by the cores kept busy).

    python -m benchmarks.study                 # the README's command as it is
    python -m benchmarks.study -P epochs=1     # a shorter study
    python -m benchmarks.study --log out.txt   # and keep what it printed
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-P", dest="params", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--log", type=Path, help="Write what the study printed (stdout, then stderr) to this file.")
    args = parser.parse_args()

    from emotion_exp.models import cpu_description

    command = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local"]
    for param in args.params:
        command += ["-P", param]
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        load_before = os.getloadavg()
        started = time.perf_counter()
        result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        load_after = os.getloadavg()
    if args.log:
        args.log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit(f"the study failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"command:      {' '.join(command[2:])}")
    print(f"cpu:          {cpu_description()}")
    print(f"load average: {load_before[0]:.1f} before, {load_after[0]:.1f} after (1-minute)")
    print(f"wall time:    {wall:.0f} s")
    print(f"cpu time:     {usage.ru_utime + usage.ru_stime:.0f} s (user + system of the study's processes)")
    print(f"peak memory:  {usage.ru_maxrss / 1024**2:.2f} GiB (largest process)")


if __name__ == "__main__":
    main()
