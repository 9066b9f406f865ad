"""shoal's benchmarks: run them all with ``python bench/run_all.py`` (see bench/README.md)."""
