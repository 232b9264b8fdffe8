"""W5: sweep throughput, 200 small runs (m = d = 16, n = 512, 500 steps), 2 workers vs 1."""

from __future__ import annotations


def run(*, log, quick: bool):
    log("  W5: not measured yet")
    return (
        [dict(workload="W5", m=16, n=512, d=16, peer="all", note="not measured")],
        [("W5: parallel efficiency >= 90%", "not measured", "not run")],
    )
