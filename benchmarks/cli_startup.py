"""CLI start-up: `lmforge --help` against a bare interpreter start, interleaved in one run.

The ratio is what matters on a shared machine: it shows the cost our imports add on top of
Python itself, which is what keeps `lmforge --help` under a second. Heavy libraries (torch,
mlflow, great_expectations, kfp) must stay out of the start-up path (tests/test_cli.py checks).

    .venv/bin/python benchmarks/cli_startup.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    lmforge = shutil.which("lmforge") or str(Path(sys.executable).parent / "lmforge")
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "lmforge --help": [lmforge, "--help"],
        "import torch": [sys.executable, "-c", "import torch"],
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved: noise hits every case alike
        for name, cmd in cases.items():
            samples[name].append(timed(cmd))
    medians = {name: statistics.median(v) for name, v in samples.items()}
    base = medians["python -c pass"]
    rows = [
        {"case": name, "median_s": round(m, 4), "ratio_to_bare_python": round(m / base, 2)}
        for name, m in medians.items()
    ]
    out = ROOT / "benchmarks" / "results" / "cli_startup.json"
    import machine  # benchmarks/machine.py: what the figures were measured on

    record = machine.describe()
    payload = {"machine": record, "repeats": args.repeats, "rows": rows}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    table = ["| case | median (s) | x bare python |", "| --- | ---: | ---: |"]
    table += [
        f"| `{r['case']}` | {r['median_s']:.3f} | {r['ratio_to_bare_python']:.2f} |" for r in rows
    ]
    md = ROOT / "docs" / "benchmarks" / "cli.md"
    md.write_text(
        f"# CLI start-up\n\n{machine.line(record)}\n\nMedian of "
        f"{args.repeats} interleaved runs (`benchmarks/cli_startup.py`; raw: "
        "`benchmarks/results/cli_startup.json`).\n\n" + "\n".join(table) + "\n"
    )
    print("\n".join(table))


if __name__ == "__main__":
    main()
