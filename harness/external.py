"""Checkpoints vsbench did not train, made into ``encoder.pt`` files every protocol reads.

:func:`import_checkpoint` loads a file in a named format into a vsbench backbone
(:func:`backbones.load_external`: every key mapped, none missing, shapes checked) and writes it as
an ``encoder.pt`` like a pretraining run's: the backbone's name, its weights, how it was trained
(the format's stride and input convention, when the format knows them) and where it came from
(``"source"``: the file's path, name, SHA-256, format and the keys dropped). The folder is named by
the file's name and hash, so the same file is imported once and a changed file never reuses a
cache of the old one. Evaluation, fine-tuning and suites then treat it as any encoder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from backbones import load_external
from backbones.checkpoints import LoadReport, get_format
from harness.train import ENCODER, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)
IMPORT_ROOT = Path("runs") / "external"


def import_checkpoint(path: str | Path, format: str, backbone: str, *, key_map: tuple[tuple[str, str], ...] = (),
                      root: str | Path = IMPORT_ROOT) -> tuple[Path, LoadReport]:
    """Write (or find, when imported before with the same rules) the ``encoder.pt`` of the checkpoint
    ``path`` read as ``format`` on ``backbone``; returns its path and the load report."""
    model, report = load_external(path, format, backbone, key_map=key_map)
    folder = Path(root) / f"{Path(path).name}-{report.sha256[:12]}-{format}-{backbone}"
    encoder = folder / ENCODER
    source = {"path": str(Path(path).resolve()), "name": Path(path).name, "sha256": report.sha256, "format": format,
              "label": report.label, "dropped": report.dropped, "key_map": [list(rule) for rule in key_map]}
    if encoder.exists() and load_checkpoint(encoder).get("source") == source:
        return encoder, report
    trained = get_format(format).training()
    save_checkpoint(encoder, {"backbone": backbone, "backbone_args": {}, "state_dict": model.state_dict(), "source": source,
                              **({"training": trained.to_dict()} if trained is not None else {})})
    log.info("imported %s (%s, %d tensors, %d keys dropped: %s) as %s", report.label, format, report.loaded,
             len(report.dropped), ", ".join(report.dropped[:8]) + (" ..." if len(report.dropped) > 8 else ""), encoder)
    return encoder, report
