"""The paper's Appendix A.3 workload (tanh single-index DEQ, d = 20, n = 8000,
eta = 0.2, tol 1e-12, held-out risk every 20 steps): deqbench's fused scalar
loop against the authors' algorithm in NumPy (``benchmarks/peers/paper_peers.py``),
the first ``STEPS`` updates of seed 100 each.

The first steps are the dearest for deqbench (2-3 Newton evaluations per sample
before the warm start settles to one): the ratio of the whole run is
``python -m tools.peers.paper_peers a3``. Skipped on commits without the
scalar kernels.
"""

from __future__ import annotations

from .common import Ungated

STEPS = 200


class PaperA3(Ungated):
    params = [["deqbench", "numpy"]]
    param_names = ["peer"]

    def setup(self, peer):
        try:
            import deqbench._scalar  # noqa: F401

            from .peers import paper_peers as pp
        except ImportError:
            raise NotImplementedError("no scalar kernels on this commit") from None
        p = pp.a3_problem(100)
        if peer == "deqbench":
            self.fn = lambda: pp.deqbench_run(p, steps=STEPS, threads=1)
        else:
            self.fn = lambda: pp.numpy_a3(p, steps=STEPS)
        self.fn()  # compiled and warm before the first sample

    def time_a3_steps(self, peer):
        self.fn()
