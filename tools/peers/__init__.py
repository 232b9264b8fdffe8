"""The peers harness: times deqbench and its peers (the implementations in
``benchmarks/peers/``) on the same seeded problems and writes the tables.

Modules: ``run_peers`` (the command), ``harness`` (one case, interleaved),
``timing`` (interleaved rounds, the pause before each batch), ``memory``
(peak memory of one step, in its own process), ``w3`` and ``w5`` (training
and sweep workloads), ``report`` (tables, figure, README), ``summary``
(medians over repeated runs).
"""
