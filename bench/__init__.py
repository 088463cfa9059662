"""Benchmarks: lkbridge side by side with a bare-SDK baseline (`make bench`, docs/benchmarks.md)."""
