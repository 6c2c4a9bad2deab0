"""Start-up cost: wall time and peak memory of fresh interpreters that import multimoe, parse a command, or import
torch, each run side by side in one session (interleaved, in a random order each round), reported as medians and as
ratios to ``import torch``.

    python benchmarks/import_time.py            # 5 rounds
    python benchmarks/import_time.py --rounds 9

The last line printed is one JSON object: {"rounds", "cases": {name: {"seconds", "peak_mb", "over_torch"}}}.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time

CASES = {
    "import torch": "import torch",
    "import multimoe": "import multimoe",
    "multimoe --help": "import contextlib\nfrom multimoe.cli import main\n"
    "with contextlib.suppress(SystemExit): main(['--help'])",
    "multimoe list": "from multimoe.cli import main\nmain(['list'])",
    "from multimoe import train": "from multimoe import train",
}


def seconds(code: str) -> float:
    """Wall time of one fresh interpreter running ``code``."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def peak_mb(code: str) -> float:
    """Peak resident memory of one fresh interpreter running ``code``, as it reports it at the end."""
    probe = f"{code}\nimport resource\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1]) / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per case (median; >= 5)")
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error("--rounds: at least 5 (medians of fewer are noise)")
    times: dict[str, list[float]] = {name: [] for name in CASES}
    peaks = {name: peak_mb(code) for name, code in CASES.items()}  # also warms the file cache
    for _ in range(args.rounds):
        for name in random.sample(list(CASES), len(CASES)):
            times[name].append(seconds(CASES[name]))
    torch_s = statistics.median(times["import torch"])
    result = {}
    print(f"{'case':<28} {'median s':>9} {'over torch':>11} {'peak MB':>8}")
    for name in CASES:
        med = statistics.median(times[name])
        result[name] = {"seconds": med, "peak_mb": peaks[name], "over_torch": med / torch_s}
        print(f"{name:<28} {med:>9.3f} {med / torch_s:>11.2f} {peaks[name]:>8.0f}")
    print(json.dumps({"rounds": args.rounds, "cases": result}))


if __name__ == "__main__":
    main()
