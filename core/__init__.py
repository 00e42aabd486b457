"""vsbench's low layer: configuration, files, processes, tracking and the data pipeline.

Everything above it (``backbones``, ``methods``, ``evaluation``, then the engine in ``harness``)
imports from here; nothing here imports from above.
"""

from importlib.metadata import version

__version__ = version("vsbench")
