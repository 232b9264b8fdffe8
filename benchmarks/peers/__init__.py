"""Peer implementations for the deqbench performance comparison (issue 6).

Every peer solves the same seeded problem in float64 with the same stopping
rule (relative residual ``||F(Z) - Z||_F / ||F(Z)||_F <= tol`` on the whole
batch, checked after every map evaluation) and returns a :class:`Outcome`.
Peers whose library is missing raise :class:`PeerMissing` when built.

Modules: ``problems`` (seeded problems), ``registry`` (which peers run which
workload), ``numpy_peers`` (NumPy loop and direct solve), ``deqbench_peers``,
``torch_peers`` (PyTorch eager and TorchDEQ), ``jax_peers`` (JAX + jaxopt).
``bench_peers.py`` times them with asv; the harness that prints the ratio
tables (``python -m tools.peers.run_peers``) lives in ``tools/peers/``.
"""
