"""vsbench's engine: the training loop, suites, reports and the command line, on top of
``core``, ``backbones``, ``methods`` and ``evaluation``."""
