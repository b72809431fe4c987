"""Benchmarks that print figures with the machine they ran on; see bench/README.md."""
