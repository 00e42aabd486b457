"""vsbench's shared engine: data pipeline, training loop, tracking, suites and reports."""

__version__ = "0.1.0"
