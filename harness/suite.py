"""Suites: methods x backbones x seeds on one data set, with one budget, as one tracked unit.

A suite file (TOML) looks like::

    name = "smoke"                      # also the MLflow experiment, unless `experiment` is set
    seeds = [0]
    backbones = ["r3d_tiny"]
    methods = ["moco"]                  # default: every registered method

    [data]                              # harness.config.DataConfig
    path = "data/motionshapes-small"
    [data.synth]                        # optional: generate MotionShapes there first if absent
    preset = "small"

    [pretrain]                          # PretrainConfig fields shared by every run (the budget)
    epochs = 2
    batch_size = 8

    [overrides.moco]                    # per-method PretrainConfig fields, incl. method_args
    lr = 0.05

    [[ablations]]                       # extra rows: a method with some switches changed
    name = "moco-no-shuffle"
    method = "moco"
    method_args = { shuffle_bn = false }

``vsbench run SUITE`` opens a parent MLflow run per invocation and a child run per
(row, backbone, seed); a row whose configuration hash already has a FINISHED run in the
experiment is skipped unless ``--force``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from harness.config import ConfigError, DataConfig, PretrainConfig, from_dict, load_toml

log = logging.getLogger(__name__)


@dataclass
class Ablation:
    """An extra table row: ``method`` with ``method_args`` changed, shown as ``name``."""

    name: str = ""
    method: str = ""
    method_args: dict = field(default_factory=dict)


@dataclass
class Suite:
    """A parsed suite file."""

    name: str = ""
    experiment: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    backbones: list[str] = field(default_factory=lambda: ["r3d_18"])
    methods: list[str] | None = None
    data: DataConfig = field(default_factory=DataConfig)
    synth: dict = field(default_factory=dict)
    pretrain: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)
    ablations: list[Ablation] = field(default_factory=list)
    path: str = ""


@dataclass(frozen=True)
class SuiteRun:
    """One pretraining run of a suite."""

    row: str  # table row name: the method, or the ablation's name
    config: PretrainConfig


def load_suite(path: str | Path) -> Suite:
    """Parse and validate a suite file; errors name the file and the key."""
    path = Path(path)
    raw = load_toml(path)
    data = dict(raw.get("data", {}))
    synth = data.pop("synth", {})
    raw = {**raw, "data": data, "synth": synth, "path": str(path)}
    try:
        suite = from_dict(Suite, raw)
        for name, table in {"pretrain": suite.pretrain, **{f"overrides.{m}": t for m, t in suite.overrides.items()}}.items():
            _check_pretrain_keys(table, name)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    suite.name = suite.name or path.stem
    return suite


def _check_pretrain_keys(table: dict, where: str) -> None:
    from_dict(PretrainConfig, {k: v for k, v in table.items() if k not in ("data",)}, where=where)


def expand(suite: Suite, registered: list[str]) -> list[SuiteRun]:
    """Every (row, backbone, seed) run of the suite, in a stable order."""
    methods = suite.methods if suite.methods is not None else registered
    unknown = [m for m in methods + [a.method for a in suite.ablations] if m not in registered]
    if unknown:
        raise ConfigError(f"{suite.path}: unknown method(s) {', '.join(unknown)}; registered methods: {', '.join(registered)}")
    rows = [(m, m, {}) for m in methods] + [(a.name or f"{a.method}-ablation", a.method, a.method_args) for a in suite.ablations]
    runs = []
    for row, method, ablation_args in rows:
        for backbone in suite.backbones:
            for seed in suite.seeds:
                runs.append(SuiteRun(row, _run_config(suite, method, backbone, seed, ablation_args, row)))
    return runs


def _run_config(suite: Suite, method: str, backbone: str, seed: int, ablation_args: dict, row: str) -> PretrainConfig:
    override = dict(suite.overrides.get(method, {}))
    method_args = {**suite.pretrain.get("method_args", {}), **override.pop("method_args", {}), **ablation_args}
    values = {**suite.pretrain, **override, "method": method, "backbone": backbone, "seed": seed, "method_args": method_args,
              "data": dataclasses.asdict(suite.data), "experiment": suite.experiment or suite.name,
              "run_name": f"{row}-{backbone}-s{seed}"}
    return from_dict(PretrainConfig, values, where=f"{suite.path}: {row}")


def ensure_data(suite: Suite) -> None:
    """Generate MotionShapes at ``data.path`` when the suite asks for it and it is not there yet."""
    if not suite.synth or (Path(suite.data.path) / "ucfTrainTestlist" / "classInd.txt").exists():
        return
    from harness.data.synthetic import PRESETS, generate_motionshapes

    options = dict(suite.synth)
    preset = options.pop("preset", "small")
    if preset not in PRESETS:
        raise ConfigError(f"{suite.path}: data.synth.preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    generate_motionshapes(suite.data.path, dataclasses.replace(PRESETS[preset], **options))


def run_suite(path: str | Path, *, force: bool = False, tracking_uri: str | None = None) -> list[dict]:
    """Run every pretraining of a suite under one parent MLflow run; returns one record per run."""
    from harness.tracking import Tracker, find_finished_runs
    from harness.train import Pretraining, run_tracked
    from methods.base import list_methods

    suite = load_suite(path)
    runs = expand(suite, list_methods())
    ensure_data(suite)
    experiment = suite.experiment or suite.name
    records = []
    with Tracker(experiment, f"suite-{suite.name}", tracking_uri=tracking_uri, tags={"suite": suite.name, "kind": "suite"}) as parent:
        parent.log_artifact(path)
        for i, item in enumerate(runs, 1):
            config = dataclasses.replace(item.config, tracking_uri=tracking_uri)
            run = Pretraining(config, resume=True)
            done = find_finished_runs(experiment, "config_hash", run.hash, tracking_uri=tracking_uri)
            if done and not force:
                log.info("[%d/%d] %s: finished before (run %s), skipped", i, len(runs), config.run_name, done[0])
                records.append({"row": item.row, "run_id": done[0], "skipped": True})
                continue
            log.info("[%d/%d] %s", i, len(runs), config.run_name)
            result = run_tracked(run, parent_run_id=parent.run_id, tags={"suite": suite.name, "row": item.row})
            records.append({"row": item.row, "run_id": result.run_id, "skipped": False, "wall_time_s": result.wall_time_s})
    return records
