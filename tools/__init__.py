"""Tools around the asv suite of ``benchmarks/``: the regression gate, the
calibration and probe scripts, and the peers harness. Run them from the
repository root (``python -m tools.calibrate``, ``tools/gate.sh BASE HEAD``);
asv never imports this package (its suites live in ``benchmarks/``)."""
