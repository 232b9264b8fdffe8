"""deqbench against its peers (issue 6): W1 forward solve, W2 exact GD step, W4 tanh step.

The same workloads as ``python -m tools.peers.run_peers`` (which also
prints the ratio table and writes ``results/peers/``). A peer whose library
is not installed is skipped (``NotImplementedError`` in ``setup``); install
them with ``pip install -e ".[peers]"``. ``setup`` builds the problem, runs
the peer once (JIT compilation, correctness check against a dense solve), so
compilation is never timed. Default grid: n = 2048, m in {32, 256} (W4: m = 64);
``DEQBENCH_FULL=1``: the issue's sizes, n = 8192, m in {32, 256, 1024} (W4: 256),
and the "numpy direct" reference.
"""

from __future__ import annotations

try:
    from .common import Ungated, grid
    from .peers import problems as P
    from .peers.problems import PeerMissing
    from .peers.registry import forward_factories, step_factories
except ImportError:  # run from the repository root without the package
    from benchmarks.common import Ungated, grid
    from benchmarks.peers import problems as P
    from benchmarks.peers.problems import PeerMissing
    from benchmarks.peers.registry import forward_factories, step_factories

SIZES = grid([32, 256], [32, 256, 1024])
N = grid([2048], [8192])[0]
TANH_M = grid([64], [256])
# "numpy direct" (one LU of I - A: the exact answer, not an iteration) in the full suite
# only: it takes a third of the peers' share of the default run and gates nothing
PEERS = ["deqbench", "numpy loop", *grid([], ["numpy direct"]), "pytorch eager", "torchdeq",
         "jaxopt"]

_CACHE: dict = {}


def _problem(kind: str, m: int):
    key = (kind, m)
    if key not in _CACHE:
        _CACHE[key] = P.linear_problem(m, N) if kind == "linear" else P.tanh_problem(m, N)
    return _CACHE[key]


def _build(factories, peer: str, p, grads: bool):
    make = dict(factories(p))[peer]
    try:
        fn = make()
    except PeerMissing as e:
        raise NotImplementedError(str(e)) from e
    if fn is None:
        raise NotImplementedError(f"{peer} does not apply to {p.name}")
    out = fn()
    P.check(p, out, what=peer, grads=grads)
    return fn, out


class PeersForward(Ungated):
    """W1: forward Picard solve of the linear DEQ, rho(A) = 0.5, tol 1e-10."""

    params = (SIZES, PEERS)
    param_names = ["m", "peer"]
    timeout = 600

    def setup(self, m, peer):
        self.fn, self.out = _build(forward_factories, peer, _problem("linear", m), False)

    def time_forward(self, m, peer):
        self.fn()

    def track_map_evaluations(self, m, peer):
        return self.out.fp_evals

    track_map_evaluations.unit = "evaluations"


class PeersGradStep(Ungated):
    """W2: loss and exact implicit gradient (forward + adjoint to 1e-10)."""

    params = (SIZES, PEERS)
    param_names = ["m", "peer"]
    timeout = 900

    def setup(self, m, peer):
        self.fn, self.out = _build(step_factories, peer, _problem("linear", m), True)

    def time_step(self, m, peer):
        self.fn()

    def peakmem_step(self, m, peer):
        self.fn()


class PeersTanhStep(Ungated):
    """W4: nonlinear (tanh) DEQ, forward + implicit gradient."""

    params = (TANH_M, [p for p in PEERS if p != "numpy direct"])
    param_names = ["m", "peer"]
    timeout = 600

    def setup(self, m, peer):
        self.fn, self.out = _build(step_factories, peer, _problem("tanh", m), True)

    def time_step(self, m, peer):
        self.fn()
