"""The Broyden peers (benchmarks/peers/broyden_peers.py): deqbench's always, TorchDEQ's
when torch and torchdeq are installed (the ``peers`` extra); answers against the dense
references of the harness, evaluation counts against each other (no timing here)."""

import pytest

from benchmarks.peers import broyden_peers as bp
from benchmarks.peers import problems as P
from benchmarks.peers.registry import forward_factories, step_factories

PROBLEMS = [P.linear_problem(8, 60, rho=0.5, seed=1), P.tanh_problem(8, 60, norm_A=0.9, seed=2)]


def test_registry_lists_both_peers():
    p = PROBLEMS[0]
    for make in (forward_factories, step_factories):
        names = [name for name, _ in make(p)]
        assert names[-2:] == ["deqbench broyden", "torchdeq broyden"]


@pytest.mark.parametrize("p", PROBLEMS, ids=lambda p: p.name)
def test_deqbench_broyden_peer(p):
    fwd = bp.deqbench_forward(p)()
    assert P.check(p, fwd, what="deqbench broyden", grads=False) <= 1e-7
    step = bp.deqbench_step(p)()
    assert P.check(p, step, what="deqbench broyden", grads=True) <= 1e-7
    assert fwd.fp_evals == step.fp_evals > 1 and step.adj_evals > 1


@pytest.mark.parametrize("p", PROBLEMS, ids=lambda p: p.name)
def test_torchdeq_broyden_peer(p):
    """Same algorithm (no restart within HISTORY steps, no line search), TorchDEQ's
    stronger per-element stopping rule: the same answer, at least as many evaluations
    and not many more."""
    pytest.importorskip("torch")
    pytest.importorskip("torchdeq")
    ours = bp.deqbench_step(p)()
    assert ours.fp_evals < bp.HISTORY
    fwd = bp.torchdeq_forward(p)()
    assert P.check(p, fwd, what="torchdeq broyden", grads=False) <= 1e-7
    step = bp.torchdeq_step(p)()
    assert P.check(p, step, what="torchdeq broyden", grads=True) <= 1e-7
    for theirs, mine in ((fwd.fp_evals, ours.fp_evals), (step.fp_evals, ours.fp_evals),
                         (step.adj_evals, ours.adj_evals)):
        assert mine <= theirs <= mine + 3


def test_peers_beyond_the_memory_cap_do_not_run(monkeypatch):
    monkeypatch.setattr(bp, "MEMORY_CAP", 2 * bp.HISTORY * 60 * 8 * 8 - 1)
    p = PROBLEMS[0]  # n = 60, m = 8
    assert bp.deqbench_forward(p) is None and bp.deqbench_step(p) is None
    assert bp.torchdeq_forward(p) is None and bp.torchdeq_step(p) is None


def test_torchdeq_missing_is_a_peer_missing(monkeypatch):
    monkeypatch.setattr(bp, "torchdeq", None)
    with pytest.raises(P.PeerMissing, match="torchdeq is not installed|torch is not"):
        bp.torchdeq_forward(PROBLEMS[0])
