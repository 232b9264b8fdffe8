"""W3: time to reach excess loss 1e-8 on the linear teacher (m = d = 256, n = 16384)."""

from __future__ import annotations

import deqbench as db

M = D = 256
N = 16384
TARGET = 1e-8


def run(*, reps: int, log):
    if not hasattr(db, "train"):
        log("  W3: not measured: dependency not landed (deqbench.train, issue 3)")
        return (
            [
                dict(
                    workload="W3",
                    m=M,
                    n=N,
                    d=D,
                    peer="all",
                    note="not measured: dependency not landed (deqbench.train)",
                )
            ],
            [
                (
                    "W3: >= 10x the best peer",
                    "not measured",
                    "dependency not landed (deqbench.train, issue 3)",
                )
            ],
        )
    raise NotImplementedError
