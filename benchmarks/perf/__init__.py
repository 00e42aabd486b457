"""pytest-benchmark throughput benchmarks (``make perf``)."""
