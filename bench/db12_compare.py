"""`pilotlog power` against DIRAC's own DB12 (PyPI ``db12``), alternating runs on one machine.

    python3 bench/db12_compare.py DIRAC_VENV_PYTHON [RUNS]

Each round runs DIRAC's ``single_dirac_benchmark(correction=False)`` (the raw figure; the
corrected one is DB12's own ``get_norm_correction`` of it, its Python-3 factor) and
``pilotlog power`` from the bundle at the default fraction (0.1) and at 1 (DB12's full
12.5 million draws), one after the other, so machine load hits all alike.  Prints a
Markdown table: medians with ranges, and the ratios (docs/dirac.md keeps the figures).
"""

import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DB12 = (
    "import json, logging; logging.disable(logging.WARNING); from db12.benchmark import single_dirac_benchmark,"
    " get_norm_correction; r = single_dirac_benchmark(correction=False)['NORM'];"
    "print(json.dumps({'raw': r, 'corrected': get_norm_correction(r)}))"
)


def pilotlog_power(fraction: str) -> float:
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "dist", "pilotlog"), "power", "--fraction", fraction],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        universal_newlines=True,
        env={"PATH": os.environ["PATH"], "PILOTLOG_SPOOL": "/tmp/db12-compare-spool"},
    )
    return float(p.stdout.split("power of ")[1].split()[0])  # "power of 41.0 DB12 (0.61 s CPU)"


def main(dirac_python, runs=3):
    ours, full, raw, corrected = [], [], [], []
    for _ in range(int(runs)):
        d = json.loads(subprocess.run([dirac_python, "-c", DB12], stdout=subprocess.PIPE, check=True).stdout)
        raw.append(d["raw"])
        corrected.append(d["corrected"])
        ours.append(pilotlog_power("0.1"))
        full.append(pilotlog_power("1"))

    def cell(values):
        return "%.2f (%.2f–%.2f)" % (statistics.median(values), min(values), max(values))

    print("| figure | median (range), %d alternating runs |" % int(runs))
    print("|---|---|")
    print("| DIRAC db12 `single_dirac_benchmark(correction=False)` (raw) | %s |" % cell(raw))
    print("| DIRAC db12 with its Python-3 correction (`get_norm_correction`) | %s |" % cell(corrected))
    print("| `pilotlog power` (default `--fraction 0.1`) | %s |" % cell(ours))
    print("| `pilotlog power --fraction 1` (DB12's draw count) | %s |" % cell(full))
    for name, values in (("0.1", ours), ("1", full)):
        for label, ref in (("raw", raw), ("corrected", corrected)):
            print(
                "| ratio pilotlog (%s) / db12 %s | %.3f |"
                % (name, label, statistics.median(values) / statistics.median(ref))
            )


if __name__ == "__main__":
    main(*sys.argv[1:])
