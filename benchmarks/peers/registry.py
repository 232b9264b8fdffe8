"""Which peers run which workload: one factory per peer, building a timed callable.

A factory returns ``fn`` (a no-argument callable returning an
:class:`~benchmarks.peers.problems.Outcome`), ``None`` when the peer does not
apply, or raises :class:`~benchmarks.peers.problems.PeerMissing` when its
library is not installed.
"""

from __future__ import annotations

from . import broyden_peers, deqbench_peers, jax_peers, numpy_peers, torch_peers

DB = "deqbench"
#: Peers that solve the same fixed points (the targets compare against the fastest).
ITERATIVE_PEERS = ("numpy loop", "pytorch eager", "torchdeq", "jaxopt")
MEM_PEERS = [DB, "numpy loop", "pytorch eager", "torchdeq", "jaxopt"]


def forward_factories(p):
    return [
        (DB, lambda: deqbench_peers.forward(p)),
        ("numpy loop", lambda: numpy_peers.forward(p)),
        ("numpy direct", lambda: numpy_peers.direct_forward(p)),
        ("pytorch eager", lambda: torch_peers.eager_forward(p)),
        ("torchdeq", lambda: torch_peers.torchdeq_forward(p)),
        ("jaxopt", lambda: jax_peers.forward(p)),
        *broyden_peers.factories(p, "forward"),
    ]


def step_factories(p):
    return [
        (DB, lambda: deqbench_peers.step(p)),
        ("numpy loop", lambda: numpy_peers.step(p)),
        ("numpy direct", lambda: numpy_peers.direct_step(p)),
        ("pytorch eager", lambda: torch_peers.eager_step(p)),
        ("torchdeq", lambda: torch_peers.torchdeq_step(p)),
        ("jaxopt", lambda: jax_peers.step(p)),
        *broyden_peers.factories(p, "step"),
    ]
