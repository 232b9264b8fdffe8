"""Data larger than memory (issue 11): chunked ``loss_and_grad`` over a
``.npy`` file on disk.

``ChunkedMemory``: peak memory of one nonlinear ``loss_and_grad`` reading
``X``, ``Y`` from disk, with ``chunk=4096`` (flat in ``n``: the target is a
fitted exponent below 0.05 from 10^4 to 10^6 under ``DEQBENCH_FULL=1``) and
in one block (``chunk=n``: grows linearly). ``LargeFile`` (``DEQBENCH_FULL=1``
only: the issue's n = 4e6, d = 512, m = 64, a 16 GB file) times the same call
against an in-memory slice. The command
``python -m tools.large_data`` reproduces the issue's targets outside asv.
"""

from __future__ import annotations

import shutil

import numpy as np

import deqbench as db

from .common import (
    Bench,
    full_only,
    grid,
    peak_rss_increase_mib,
    require_api,
    samples_per_second,
    strict,
)
from .common import write_teacher_once as write

M, D = 16, 16
CHUNK = 4096


def params_for(d: int, m: int):
    A, B = db.data.init_params(d, m, scale_A=0.5, scale_B=1.0, seed=1)
    return A, B


class ChunkedMemory(Bench):
    """Peak memory of ``loss_and_grad("nonlinear", tanh)`` on ``X``, ``Y`` files
    (``n`` rows, ``d = m = 16``), in blocks of 4096 rows or in one block."""

    params = [grid([10_000, 100_000], [10_000, 100_000, 1_000_000]), ["4096", "n"]]
    param_names = ["n", "chunk"]
    rounds = 1

    def setup(self, n, chunk):
        require_api()
        self.root = write(None, n, D, M)
        self.A, self.B = params_for(D, M)
        self.chunk = n if chunk == "n" else min(int(chunk), n)
        strict(self._call)

    def teardown(self, n, chunk):
        shutil.rmtree(self.root, ignore_errors=True)

    def _call(self):
        return db.loss_and_grad("nonlinear", self.root / "X.npy", self.root / "Y.npy", self.A,
                                self.B, activation="tanh", chunk=self.chunk)

    def peakmem_loss_and_grad(self, n, chunk):
        self._call()

    def track_peak_increase(self, n, chunk):
        return peak_rss_increase_mib(self._call)

    track_peak_increase.unit = "MiB"


@full_only
class LargeFile(Bench):
    """The issue's large-file case (``DEQBENCH_FULL=1`` only: it writes a 16 GB
    file): tanh ``loss_and_grad`` on ``n = 4e6`` rows, ``d = 512``, ``m = 64``,
    against an in-memory slice of 2e5 rows (``track_slowdown_vs_in_memory``:
    in-memory samples/s over file samples/s, lower is better; the target, file
    throughput >= 80% of in-memory, is a value <= 1.25)."""

    params = [[4_000_000]]
    param_names = ["n"]
    rounds = 1
    repeat = (1, 1, 1.0)
    d, m = 512, 64

    def setup(self, n):
        require_api()
        self.root = write(None, n, self.d, self.m)
        self.A, self.B = params_for(self.d, self.m)
        X, Y, _, _ = db.data.read_teacher(self.root, verify=False)  # just written
        k = min(n, 200_000)
        self.Xs, self.Ys = np.array(X[:k]), np.array(Y[:k])
        strict(self._in_memory)

    def teardown(self, n):
        shutil.rmtree(self.root, ignore_errors=True)

    def _file(self):
        return db.loss_and_grad("nonlinear", self.root / "X.npy", self.root / "Y.npy", self.A,
                                self.B, activation="tanh", chunk="auto")

    def _in_memory(self):
        return db.loss_and_grad("nonlinear", self.Xs, self.Ys, self.A, self.B,
                                activation="tanh", chunk="auto")

    def time_loss_and_grad_file(self, n):
        self._file()

    def peakmem_loss_and_grad_file(self, n):
        self._file()

    def track_slowdown_vs_in_memory(self, n):
        return (samples_per_second(self._in_memory, len(self.Xs))
                / samples_per_second(self._file, n))

    track_slowdown_vs_in_memory.unit = "ratio"
