"""Reproducible benchmarks; each prints one JSON document (and writes it to bench/results/)."""
