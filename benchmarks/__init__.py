"""asv benchmark suite of deqbench (run ``asv run`` from the repository root)."""
