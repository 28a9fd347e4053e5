"""Placeholder benchmark runner: ``make bench`` / ``python -m benchmarks.run``.

Times ``import sora_sdk`` in fresh interpreter processes and writes the
result to ``benchmarks/RESULTS.md``. The real benchmarks replace this.
"""

import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "RESULTS.md")


def time_import(runs=5):
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import sora_sdk"], cwd=ROOT, check=True)
        samples.append(time.perf_counter() - t0)
    return samples


def main():
    samples = time_import()
    impl = "%s %s" % (platform.python_implementation(), platform.python_version())
    lines = [
        "# Benchmark results",
        "",
        "Placeholder written by `benchmarks/run.py`.",
        "",
        "| benchmark | interpreter | runs | median (ms) | min (ms) |",
        "|---|---|---|---|---|",
        "| `import sora_sdk` (new process) | %s | %d | %.1f | %.1f |"
        % (impl, len(samples), statistics.median(samples) * 1e3, min(samples) * 1e3),
        "",
    ]
    with open(RESULTS, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    print("wrote", os.path.relpath(RESULTS, ROOT))


if __name__ == "__main__":
    main()
