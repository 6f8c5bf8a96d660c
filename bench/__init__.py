"""Benchmarks printing ratios measured in one run; run from the repository's folder as
``python -m bench.<name>`` (see bench/README.md)."""
