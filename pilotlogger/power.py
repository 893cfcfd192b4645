"""A quick CPU power figure in the DIRAC Benchmark 2012 (DB12) style.

What it measures: the DB12 kernel — draw Gaussian random numbers with
``random.normalvariate(10, 1)`` and accumulate their sums and sums of squares — timed
in CPU seconds of this process (``time.process_time``), after one untimed warm-up pass (so CPUs
that raise their clock under load are measured at speed), as DB12 does.

How long it runs: DB12 times 12.5 million draws (calibrated as 250 HS06·seconds); this
runs ``fraction`` of that (default 1/10, about 1–2 s of CPU for warm-up plus measurement
on a current core) and scales the calibration the same way, so the figure reads in DB12
units.  It is single-threaded: the power of one core, as DB12 reports.
"""

import random
import time

DB12_DRAWS = 12500000
DB12_CALIBRATION = 250.0
DEFAULT_FRACTION = 0.1


def db12(fraction: float = DEFAULT_FRACTION) -> dict:
    """``{"db12": norm, "cpu_s": …, "wall_s": …, "draws": …}`` for one core."""
    n = max(1000, int(DB12_DRAWS * fraction))
    gauss = random.normalvariate
    m = m2 = p = p2 = 0.0
    start = (0.0, 0.0)  # (CPU, wall) when the timed repetition began
    for rep in range(2):  # rep 0 warms up, rep 1 is timed
        if rep == 1:
            start = (time.process_time(), time.perf_counter())  # ns resolution: os.times ticks are 10 ms
        for _ in range(n):
            t = gauss(10, 1)
            m += t
            m2 += t * t
            p += t
            p2 += t * t
    wall = time.perf_counter() - start[1]
    cpu = (
        round(time.process_time() - start[0], 6) or round(wall, 6) or 1e-6
    )  # the figure is computed from what is shown
    return {
        "db12": round(DB12_CALIBRATION * (n / DB12_DRAWS) / cpu, 3),
        "cpu_s": cpu,
        "wall_s": round(wall, 3),
        "draws": n,
    }
