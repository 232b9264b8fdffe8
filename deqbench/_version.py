"""The package version, importable without importing the package (the
machine probes and the calibration key read it from below the public layer)."""

__version__ = "0.1.0"
