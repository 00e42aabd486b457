"""Suites: methods x backbones x seeds on one data set, with one budget, as one tracked unit.

A suite file (TOML) looks like::

    name = "smoke"                      # also the MLflow experiment, unless `experiment` is set
    seeds = [0]
    backbones = ["r3d_tiny"]
    methods = ["moco"]                  # default: every registered method

    [data]                              # core.config.DataConfig
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

    references = ["random init", "supervised"]   # reference rows: floor and ceiling (on every backbone used)

    [[checkpoints]]                     # external checkpoint rows: weights vsbench did not train
    file = "weights/r3d_18-b3b3357e.pth"  # relative to the suite file's folder, or absolute
    format = "torchvision"              # backbones.list_formats()
    backbone = "r3d_18"
    key_map = []                        # optional extra renames, "PATTERN=REPLACEMENT"
    paper_protocol = "iic"              # optional: also evaluate as that paper's scripts do (its own columns)

    [eval]                              # evaluation.evaluate.EvalConfig: which protocols, their settings
    protocols = ["retrieval", "linear", "knn", "probe", "finetune"]
    [eval.features]                     # evaluation.protocols.FeatureProtocol
    clips = 10
    [eval.finetune]                     # evaluation.protocols.FinetuneProtocol (also trains the "supervised" row)
    epochs = 30

Two kinds of row. A backbone name gives **controlled** rows: every method on that backbone with the
suite's settings. The name ``"paper"`` gives **paper-setup** rows: each method on the backbone of its
paper (``Method.paper_backbone``), with its paper's initialisation, input size and recipe (the
method's defaults; docs/paper-configurations.md), and the learning rate scaled linearly when the
suite's batch differs from the paper's (``lr_scaling = "linear"``). The suite's other settings
still apply (a CPU budget has to shrink epochs, batch and input), and each such run records which
paper values the suite changed (tag ``setup.changed``); the table labels the rows
``<method> (paper setup)`` and lists those changes under it. Reference rows run on every backbone
the suite's rows use. An external checkpoint row (``[[checkpoints]]``) evaluates a file in a named
format (:mod:`harness.external`) with the suite's protocols, once per seed, and is labelled by the
file's name and the first 12 hex digits of its SHA-256 (``r3d_18-b3b3357e.pth@0123456789ab``).
With ``paper_protocol`` it is evaluated a second time with that paper's own settings
(:func:`evaluation.evaluate.paper_protocol` over the suite's ``[eval]``): other protocol hashes,
so the table gives the paper-protocol numbers their own columns beside the shared ones.

``vsbench run SUITE`` opens a parent MLflow run (an interrupted invocation's parent is continued
by the next one with the same settings: ``suite_run.json``, a :class:`~core.io.RunMemo`) and a child run per
(row, backbone, seed), evaluates every encoder with the suite's protocols (metrics
``eval/<protocol>/<metric>`` on the same child run), and ends with the comparison table. A run
whose configuration and protocols match a FINISHED run of the experiment is skipped unless
``--force``.

The whole suite is checked before the first run trains (:func:`expand`), so a mistake never
surfaces after hours of pretraining: every key of every row, the backbones, the evaluation split
against ``data.split``, every k of a ranking protocol (``eval.knn.k``, ``eval.retrieval.ks``)
against the gallery (the train split), and every video of the evaluated train and test lists
(probed, not decoded). ``[data.synth]`` data is generated before these checks.

``--force`` starts every run afresh: the ``last.pt`` and ``encoder.pt`` of its run folder (and of
its fine-tune folder) are deleted before it trains, so nothing of an earlier configuration or of
earlier data is resumed. Without ``--force``, a run folder whose checkpoint another configuration
wrote is an error that says to use ``--force``.

``vsbench run --set KEY=VALUE`` changes a key of the suite file (dotted, value in TOML syntax)
and ``--dry-run`` prints the runs with their resolved configs after every check, and runs and
writes nothing (:func:`plan_suite`, :func:`describe_plan`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from core.config import RECIPE_FIELDS, ConfigError, DataConfig, PretrainConfig, config_hash, from_dict, load_toml, to_dict
from core.io import RunMemo

log = logging.getLogger(__name__)
SUITE_RUN = "suite_run.json"  # in the suite's output folder: its parent MLflow run (core.io.RunMemo)


@dataclass
class Ablation:
    """An extra table row: ``method`` with ``method_args`` changed, shown as ``name``."""

    name: str = ""
    method: str = ""
    method_args: dict = field(default_factory=dict)


@dataclass
class ExternalCheckpoint:
    """An extra table row: the weights of ``file`` read as ``format`` into ``backbone``."""

    file: str = ""
    format: str = ""
    backbone: str = ""
    key_map: list[str] = field(default_factory=list)
    paper_protocol: str | None = None


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
    references: list[str] = field(default_factory=list)  # "random init", "supervised"
    checkpoints: list[ExternalCheckpoint] = field(default_factory=list)
    eval: dict = field(default_factory=dict)  # EvalConfig fields
    path: str = ""


PAPER = "paper"  # the backbones entry that asks for each method's paper setup


@dataclass(frozen=True)
class SuiteRun:
    """One pretraining run of a suite."""

    row: str  # table row name: the method, or the ablation's name
    config: PretrainConfig
    setup: str = "controlled"  # controlled | paper
    changed: tuple[str, ...] = ()  # paper rows: the paper's settings the suite changed

    def tags(self) -> dict[str, str]:
        """The run's ``setup`` tags, which the table labels rows by."""
        tags = {"setup": self.setup}
        if self.setup == PAPER:
            tags["setup.changed"] = ", ".join(self.changed) or "nothing"
        return tags


def load_suite(path: str | Path, *, contents: dict | None = None) -> Suite:
    """Parse and validate a suite file; errors name the file and the key. ``contents``: the file's
    TOML table already read (and changed, e.g. by ``vsbench run --set``); default: read ``path``."""
    path = Path(path)
    raw = load_toml(path) if contents is None else contents
    data = dict(raw.get("data", {}))
    synth = data.pop("synth", {})
    raw = {**raw, "data": data, "synth": synth, "path": str(path)}
    try:
        suite = from_dict(Suite, raw)
        for name, table in {"pretrain": suite.pretrain, **{f"overrides.{m}": t for m, t in suite.overrides.items()}}.items():
            _check_pretrain_keys(table, name)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    unknown = set(suite.references) - set(REFERENCES)
    if unknown:
        raise ConfigError(f"{path}: references: unknown row(s) {sorted(unknown)}; valid: {', '.join(REFERENCES)}")
    eval_config(suite)  # validate now, not after hours of pretraining
    for ext in suite.checkpoints:
        file = Path(ext.file).expanduser()
        ext.file = str(file if file.is_absolute() else path.parent / file)
    suite.name = suite.name or path.stem
    return suite


REFERENCES = ("random init", "supervised")


def eval_config(suite: Suite, paper: str | None = None):
    """The suite's evaluation settings as an EvalConfig (errors name the key); with ``paper``, that
    paper's own protocol settings over them (the suite keeps its protocols and workers)."""
    from core.config import merge_tables
    from evaluation.evaluate import EvalConfig, paper_protocol

    try:
        values = merge_tables(suite.eval, paper_protocol(paper)) if paper else suite.eval
        return from_dict(EvalConfig, values, where="eval" if not paper else f"eval with paper protocol {paper}")
    except ConfigError as err:
        raise ConfigError(f"{suite.path}: {err}") from err


def _check_pretrain_keys(table: dict, where: str) -> None:
    from_dict(PretrainConfig, {k: v for k, v in table.items() if k not in ("data",)}, where=where)


def expand(suite: Suite, registered: list[str]) -> list[SuiteRun]:
    """Every (row, backbone, seed) run of the suite, in a stable order, once the whole suite has
    passed :func:`_check_before_running` (its data must be there: see :func:`plan_suite`)."""
    methods = suite.methods if suite.methods is not None else registered
    unknown = [m for m in methods + [a.method for a in suite.ablations] if m not in registered]
    if unknown:
        raise ConfigError(f"{suite.path}: unknown method(s) {', '.join(unknown)}; registered methods: {', '.join(registered)}")
    rows = [(m, m, {}) for m in methods] + [(a.name or f"{a.method}-ablation", a.method, a.method_args) for a in suite.ablations]
    _check_before_running(suite, registered, rows)
    runs = []
    for row, method, ablation_args in rows:
        for backbone in suite.backbones:
            for seed in suite.seeds:
                config = _run_config(suite, method, backbone, seed, ablation_args, row)
                if backbone == PAPER:
                    runs.append(SuiteRun(row, config, PAPER, paper_changes(config)))
                else:
                    runs.append(SuiteRun(row, config))
    return runs


def reference_backbones(suite: Suite, runs: list[SuiteRun]) -> list[str]:
    """The backbones the reference rows run on: every backbone the suite's rows use, in order
    (a "paper" entry stands for its methods' paper backbones)."""
    used = [b for b in suite.backbones if b != PAPER] + [r.config.backbone for r in runs if r.setup == PAPER]
    return list(dict.fromkeys(used))


def paper_changes(config: PretrainConfig) -> tuple[str, ...]:
    """The settings of a paper-setup run that differ from its method's paper configuration: recipe
    fields (lr only when set explicitly: the linear rule follows the batch), method Config fields,
    the initialisation, and budget caps (steps_per_epoch, decode_size)."""
    from methods.base import build_config, get_method

    cls = get_method(config.method)
    changed = [k for k in RECIPE_FIELDS if getattr(config, k) is not None and getattr(config, k) != getattr(cls.recipe, k)]
    paper_config = build_config(cls)
    changed += [f"method_args.{k}" for k, v in config.method_args.items() if getattr(paper_config, k, None) != v]
    if config.init is not None and config.init != cls.backbone_init:
        changed.append("init")
    changed += [k for k in ("steps_per_epoch", "decode_size") if getattr(config, k) is not None]
    return tuple(sorted(changed))


SET_BY_THE_SUITE = {"method": "methods / [[ablations]]", "backbone": "backbones", "seed": "seeds", "run_name": "the row name",
                    "experiment": "experiment", "data": "[data]"}


def _check_before_running(suite: Suite, registered: list[str], rows: list[tuple[str, str, dict]]) -> None:
    """Every key of every row, and the evaluation settings against the data, checked before the
    first run trains: a typo in the last row's method_args, a kNN k larger than the gallery or a
    corrupt test video must not surface after the earlier rows have trained. The data check is
    cheap: videos are probed (header, packet count, first frame), not decoded, and the data set's
    index caches the result."""
    from backbones import INIT_SCHEMES, list_backbones
    from methods.base import build_config, get_method

    unknown = sorted(set(suite.overrides) - set(registered))
    if unknown:
        raise ConfigError(f"{suite.path}: [overrides.{unknown[0]}]: no such method; registered methods: {', '.join(registered)}")
    for where, table in {"pretrain": suite.pretrain, **{f"overrides.{m}": t for m, t in suite.overrides.items()}}.items():
        for key in sorted(set(table) & set(SET_BY_THE_SUITE)):
            raise ConfigError(f"{suite.path}: {where}.{key}: set by the suite itself; use {SET_BY_THE_SUITE[key]}")
    for where, table in {"pretrain": suite.pretrain, **{f"overrides.{m}": t for m, t in suite.overrides.items()}}.items():
        if "init" in table and table["init"] not in INIT_SCHEMES:
            raise ConfigError(f"{suite.path}: {where}.init = {table['init']!r}: unknown initialisation; valid: {', '.join(INIT_SCHEMES)}")
    missing = [b for b in suite.backbones if b not in list_backbones() and b != PAPER]
    if missing:
        raise ConfigError(f"{suite.path}: backbones: unknown backbone {missing[0]!r}; registered: {', '.join(list_backbones())}, "
                          f"or {PAPER!r} for each method's paper backbone")
    if PAPER in suite.backbones:
        unregistered = sorted({m for _, m, _ in rows if get_method(m).paper_backbone not in list_backbones()})
        if unregistered:
            cls = get_method(unregistered[0])
            raise ConfigError(f"{suite.path}: backbones = [\"paper\"]: method {unregistered[0]!r} names the paper backbone "
                              f"{cls.paper_backbone!r}, which is not registered; registered: {', '.join(list_backbones())}")
    for row, method, ablation_args in rows:
        args = {**suite.pretrain.get("method_args", {}), **suite.overrides.get(method, {}).get("method_args", {}), **ablation_args}
        try:
            build_config(get_method(method), args)
        except ConfigError as err:
            raise ConfigError(f"{suite.path}: row {row!r}: {err}") from err
    rows_of = {}
    for i, ext in enumerate(suite.checkpoints):
        row = (_check_external(suite, i, ext), ext.backbone)
        if row in rows_of:  # one table row: the second would silently replace the first's values
            raise ConfigError(f"{suite.path}: checkpoints[{rows_of[row]}] and checkpoints[{i}] are both row {row[0]!r} on "
                              f"{row[1]}; list each file once per backbone (a paper protocol goes in the same entry)")
        rows_of[row] = i
    _check_against_data(suite)


def _check_external(suite: Suite, index: int, ext: ExternalCheckpoint) -> str:
    """An external checkpoint row loads: a known format and backbone, every key mapped, none
    missing, every shape equal (the file is read, nothing is written); returns its row label."""
    from backbones import load_external
    from backbones.checkpoints import get_format, parse_key_map
    from evaluation.evaluate import resolve_all

    try:
        _, report = load_external(ext.file, ext.format, ext.backbone, key_map=parse_key_map(ext.key_map))
        for paper in (None, ext.paper_protocol) if ext.paper_protocol else (None,):  # without a record, [eval] must set stride and input
            resolve_all(eval_config(suite, paper), get_format(ext.format).training())
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise ConfigError(f"{suite.path}: checkpoints[{index}] ({ext.file}): {err}") from err
    return report.label


def _check_against_data(suite: Suite) -> None:
    """The evaluation settings against the data: the split, the gallery size, decodable videos."""
    from evaluation.evaluate import eval_data
    from core.data.datasets import DatasetError

    evaluation = eval_config(suite)
    _check_eval_split(suite, evaluation)
    if not Path(suite.data.path).exists():
        raise DatasetError(f"{suite.path}: data.path = {suite.data.path!r}: no such file or folder")
    try:
        eval_data(suite.data, evaluation)
    except ConfigError as err:
        raise ConfigError(f"{suite.path}: {err}") from err


def _check_eval_split(suite: Suite, evaluation) -> None:
    """Encoders are evaluated on the split they were pretrained on: the test list of another
    official split shares videos with the train list pretraining read."""
    splits = {"eval.features.split": evaluation.features.split}
    if "finetune" in evaluation.protocols or "supervised" in suite.references:
        splits["eval.finetune.split"] = evaluation.finetune.split
    for key, split in splits.items():
        if split != suite.data.split:
            raise ConfigError(f"{suite.path}: {key} = {split} but data.split = {suite.data.split}: the test list of split {split} "
                              f"shares videos with the train list of split {suite.data.split} the encoders are pretrained on; "
                              f"set {key} = {suite.data.split} (or data.split = {split})")


def _run_config(suite: Suite, method: str, backbone: str, seed: int, ablation_args: dict, row: str) -> PretrainConfig:
    """The PretrainConfig of one (row, backbone, seed); ``backbone = "paper"`` takes the method's paper
    backbone and scales the paper's learning rate linearly with the batch (unless the suite sets either)."""
    from methods.base import get_method

    override = dict(suite.overrides.get(method, {}))
    method_args = {**suite.pretrain.get("method_args", {}), **override.pop("method_args", {}), **ablation_args}
    values = {**suite.pretrain, **override, "method": method, "backbone": backbone, "seed": seed, "method_args": method_args,
              "data": dataclasses.asdict(suite.data), "experiment": suite.experiment or suite.name,
              "run_name": f"{row}-{backbone}-s{seed}"}
    if backbone == PAPER:
        values.setdefault("lr_scaling", "linear")
        values["backbone"] = get_method(method).paper_backbone
    return from_dict(PretrainConfig, values, where=f"{suite.path}: {row}")


def ensure_data(suite: Suite, *, generate: bool = True) -> None:
    """Generate MotionShapes at ``data.path`` when the suite asks for it and it is not there yet;
    with ``generate=False`` (a dry run, which writes nothing) missing data is an error instead."""
    if not suite.synth or (Path(suite.data.path) / "ucfTrainTestlist" / "classInd.txt").exists():
        return
    from core.data.synthetic import PRESETS, generate_motionshapes

    options = dict(suite.synth)
    preset = options.pop("preset", "small")
    if preset not in PRESETS:
        raise ConfigError(f"{suite.path}: data.synth.preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if not generate:
        raise ConfigError(f"{suite.path}: data.path = {suite.data.path!r} is not generated yet ([data.synth]) and a dry run writes "
                          f"nothing, so it cannot check that data; generate it first (`vsbench data synth --preset {preset} "
                          f"--out {suite.data.path}`, with the options of [data.synth]) or run the suite without --dry-run")
    generate_motionshapes(suite.data.path, dataclasses.replace(PRESETS[preset], **options))


def plan_suite(path: str | Path, *, contents: dict | None = None, dry_run: bool = False) -> tuple[Suite, list[SuiteRun]]:
    """The suite at ``path`` (``contents``: its TOML table as changed by ``--set``) and its runs, checked
    whole against its data (:func:`expand`); ``[data.synth]`` data is generated first, except in a
    dry run."""
    from methods.base import list_methods

    suite = load_suite(path, contents=contents)
    ensure_data(suite, generate=not dry_run)
    return suite, expand(suite, list_methods())


def describe_plan(suite: Suite, runs: list[SuiteRun]) -> str:
    """What ``vsbench run --dry-run`` prints: every pretraining run with its resolved config (one
    JSON line), the reference runs, and the evaluation settings every encoder goes through."""
    references = [_reference_name(row, b, s) for b in reference_backbones(suite, runs) for s in suite.seeds for row in suite.references]
    lines = [(f"suite {suite.name} ({suite.path}) on {suite.data.path}: {len(runs)} pretraining run(s), {len(references)} reference "
              "run(s); dry run: no run started, nothing written to MLflow or the run folders (whether a run finished before is "
              "looked up only when the suite runs)")]
    for item in runs:
        setup = f"; paper setup, changed: {', '.join(item.changed) or 'nothing'}" if item.setup == PAPER else ""
        lines += [f"{item.config.run_name} (row {item.row}{setup}):", f"  {json.dumps(to_dict(item.config), sort_keys=True)}"]
    lines += [f"{name} (reference row)" for name in references]
    lines += [f"{Path(ext.file).name} as {ext.format} on {ext.backbone}, seeds {suite.seeds} (external checkpoint row)"
              for ext in suite.checkpoints]
    lines += ["eval (every run):", f"  {json.dumps(to_dict(eval_config(suite)), sort_keys=True)}"]
    return "\n".join(lines)


def run_suite(path: str | Path, *, contents: dict | None = None, force: bool = False, tracking_uri: str | None = None,
              command: str | None = None) -> list[dict]:
    """Pretrain and evaluate every run of a suite under one parent MLflow run; returns one record per row run.

    ``contents``: the suite file's TOML table as changed by ``--set``. ``force``: rerun finished runs,
    each from scratch (:func:`_start_afresh`). ``command``: the command line that started the suite
    (default ``vsbench run <path>``), written under the table and tagged on the parent run; with
    ``--set`` options it names them, and the parent run holds the suite as resolved
    (``suite_resolved.json``), so a table never hides what changed its settings."""
    from core.data.cache import reserve as reserve_frame_cache
    from core.tracking import Tracker
    from core.tracking_sync import sync_if_needed

    suite, runs = plan_suite(path, contents=contents)
    sync_if_needed(tracking_uri)  # runs that ended while the server was down count as done
    reserve_frame_cache(suite.data.cache_gb)  # before the first row: the reference rows evaluate without pretraining
    evaluation = eval_config(suite)
    experiment = suite.experiment or suite.name
    command = command or f"vsbench run {path}"
    resolved = contents if contents is not None else load_toml(path)
    records = []
    memo = RunMemo(Path(suite.pretrain.get("output_dir", "runs")) / SUITE_RUN, config_hash(resolved))
    if force:
        _end_abandoned(memo, "the suite's parent run", tracking_uri)
    with Tracker(experiment, f"suite-{suite.name}", tracking_uri=tracking_uri, continue_run_id=None if force else memo.run_id(),
                 tags={"suite": suite.name, "kind": "suite", "suite.command": command}) as parent:
        memo.remember(parent.run_id)
        parent.log_artifact(path)
        parent.log_dict(resolved, "suite_resolved.json")
        for i, item in enumerate(runs, 1):
            log.info("[%d/%d] %s", i, len(runs), item.config.run_name)
            with _foreign_checkpoint_needs_force(item.config.run_name):
                records.append(_pretrain_and_evaluate(item, suite, evaluation, parent.run_id, force, tracking_uri))
        for backbone in reference_backbones(suite, runs):
            for seed in suite.seeds:
                for row in suite.references:
                    with _foreign_checkpoint_needs_force(_reference_name(row, backbone, seed)):
                        records.append(_reference_row(row, backbone, seed, suite, evaluation, parent.run_id, force, tracking_uri))
        for ext in suite.checkpoints:
            records += _external_rows(ext, suite, evaluation, parent.run_id, force, tracking_uri)
        records.append({"row": "table", "report": _report(suite, experiment, parent, tracking_uri, command)})
    return records


@contextlib.contextmanager
def _foreign_checkpoint_needs_force(run_name: str):
    """Pretraining refuses to resume a checkpoint another configuration wrote. In a suite that means
    the suite or its data changed since that run: a ConfigError saying to use --force."""
    from harness.train import ForeignCheckpoint

    try:
        yield
    except ForeignCheckpoint as err:
        raise ConfigError(f"run {run_name}: {err}: the suite's settings or its data changed since that checkpoint was written; "
                          "rerun with --force, which deletes its last.pt and encoder.pt and trains it afresh") from err


def _start_afresh(output_dir: str, *run_names: str, tracking_uri: str | None = None) -> None:
    """``--force``: delete ``last.pt``, ``encoder.pt`` and ``mlflow_run.json`` of these run folders,
    so their runs train from scratch instead of resuming (a finished checkpoint would be "resumed"
    with no step, one of another configuration refused) and are tracked as new MLflow runs. The
    MLflow run an interrupted earlier attempt left RUNNING is marked KILLED. Nothing else in the
    folders is touched."""
    from harness.train import CHECKPOINT, ENCODER, MLFLOW_RUN

    for name in run_names:
        folder = Path(output_dir) / name
        memo = RunMemo(folder / MLFLOW_RUN, "")
        _end_abandoned(memo, name, tracking_uri)
        for file in (folder / CHECKPOINT, folder / ENCODER, memo.path):
            if file.exists():
                log.info("--force: removing %s, the run starts afresh", file)
                file.unlink()


def _end_abandoned(memo: RunMemo, what: str, tracking_uri: str | None) -> None:
    """``--force``: the MLflow run ``memo`` names, if an interrupted attempt left it RUNNING, is
    marked KILLED (the forced run is a new one)."""
    from core.tracking import end_abandoned_run

    run_id = memo.recorded()
    if run_id and end_abandoned_run(run_id, tracking_uri=tracking_uri):
        log.info("--force: MLflow run %s of %s was left RUNNING by an interrupted attempt: marked KILLED", run_id, what)


def _reference_name(row: str, backbone: str, seed: int) -> str:
    """The run (and run folder) name of a reference row."""
    return f"{row.replace(' ', '-')}-{backbone}-s{seed}"


def _skip_key(*parts) -> str:
    return config_hash([str(p) for p in parts])


def _finished(experiment: str, key: str, tracking_uri: str | None) -> str | None:
    from core.tracking import find_finished_runs

    done = find_finished_runs(experiment, "suite_key", key, tracking_uri=tracking_uri)
    return done[0] if done else None


def _pretrain_and_evaluate(item: SuiteRun, suite: Suite, evaluation, parent_id: str, force: bool, tracking_uri) -> dict:
    from evaluation.evaluate import evaluate_encoder, finetune_run_name, protocol_tags
    from harness.train import Pretraining, run_tracked, train_classifier

    config = dataclasses.replace(item.config, tracking_uri=tracking_uri)
    if force:
        _start_afresh(config.output_dir, config.run_name, finetune_run_name(config.run_name), tracking_uri=tracking_uri)
    run = Pretraining(config, resume=True)
    tags = protocol_tags(evaluation)
    key = _skip_key(run.hash, sorted(tags.items()))
    done = _finished(config.experiment, key, tracking_uri)
    if done and not force:
        log.info("%s: finished before (run %s), skipped", config.run_name, done)
        return {"row": item.row, "run_id": done, "skipped": True}

    def evaluate(run, result, tracker):
        tracker.set_tags(tags)
        examples = run.run_dir / "retrieval_examples.png"
        metrics = evaluate_encoder(run.method.encoder, data=config.data, config=evaluation, device=run.dist.device,
                                   cache_dir=Path(config.output_dir) / "features", finetune_from=str(result.encoder_path),
                                   backbone=config.backbone, seed=config.seed, output_dir=config.output_dir, run_name=config.run_name,
                                   examples_path=examples if run.dist.is_main else None,
                                   trained=run.encoder_training(), trainer=train_classifier)
        tracker.log_metrics(metrics, step=result.steps)
        if examples.exists():
            tracker.log_artifact(examples)

    result = run_tracked(run, parent_run_id=parent_id, after=evaluate,
                         tags={"suite": suite.name, "row": item.row, "kind": "pretrain", "suite_key": key, **item.tags()})
    return {"row": item.row, "run_id": result.run_id, "skipped": False, "wall_time_s": result.wall_time_s}


def _reference_row(row: str, backbone: str, seed: int, suite: Suite, evaluation, parent_id: str, force: bool, tracking_uri) -> dict:
    """"random init": the untrained backbone through every protocol but fine-tuning (which, from random
    weights, is the "supervised" row). "supervised": the backbone trained with labels by the fine-tune
    protocol from scratch, then evaluated like every other encoder."""
    import torch

    from backbones import create_backbone
    from evaluation.evaluate import evaluate_encoder, protocol_tags
    from evaluation.finetune import classifier_training, run_finetune
    from core.data.encoder_input import EncoderTraining
    from core.distributed import init_distributed
    from core.tracking import Tracker
    from harness.train import train_classifier

    experiment = suite.experiment or suite.name
    pretrain = from_dict(PretrainConfig, {k: v for k, v in suite.pretrain.items() if k != "method_args"})
    tags = protocol_tags(evaluation)
    if row == "supervised":  # trained by the fine-tune protocol, whether or not the suite fine-tunes its encoders
        tags["protocol.finetune"] = evaluation.finetune.hash()
    key = _skip_key(row, backbone, seed, suite.data, sorted(tags.items()), suite.pretrain.get("backbone_args", {}))
    done = _finished(experiment, key, tracking_uri)
    if done and not force:
        return {"row": row, "run_id": done, "skipped": True}
    device = init_distributed(pretrain.device).device
    name = _reference_name(row, backbone, seed)
    if force:
        _start_afresh(pretrain.output_dir, name, tracking_uri=tracking_uri)
    run_tags = {"suite": suite.name, "row": row, "kind": "reference", "method": row, "backbone": backbone, "seed": str(seed),
                "suite_key": key, **tags}
    with Tracker(experiment, name, tracking_uri=tracking_uri, parent_run_id=parent_id, tags=run_tags) as tracker:
        metrics: dict[str, float] = {}
        no_finetune = dataclasses.replace(evaluation, protocols=[p for p in evaluation.protocols if p != "finetune"])
        if row == "supervised":
            ft, encoder = run_finetune(evaluation.finetune, backbone=backbone, data=suite.data, init_encoder=None, seed=seed,
                                       device=str(device), output_dir=pretrain.output_dir, run_name=name, workers=evaluation.workers,
                                       trainer=train_classifier)
            metrics |= {f"eval/finetune/{k}": v for k, v in ft.items()}
        else:
            torch.manual_seed(seed)
            encoder = create_backbone(backbone, **pretrain.backbone_args)
        trained = classifier_training(evaluation.finetune) if row == "supervised" else EncoderTraining()
        tracker.log_params({"input": trained.input.to_dict()})
        metrics |= evaluate_encoder(encoder, data=suite.data, config=no_finetune, device=device, seed=seed,
                                    cache_dir=None, backbone=backbone, output_dir=pretrain.output_dir, run_name=name,
                                    trained=trained)
        tracker.log_metrics({**metrics, "pretrain/params": sum(p.numel() for p in encoder.parameters())}, step=0)
        return {"row": row, "run_id": tracker.run_id, "skipped": False}


def _external_rows(ext: ExternalCheckpoint, suite: Suite, evaluation, parent_id: str, force: bool, tracking_uri) -> list[dict]:
    """An external checkpoint made into an encoder.pt once (harness.external), then evaluated for
    every seed with the suite's protocols, fine-tuning included, and with its ``paper_protocol`` if
    it names one; the row is named by the file's name and hash."""
    from backbones.checkpoints import parse_key_map
    from harness.external import import_checkpoint

    pretrain = from_dict(PretrainConfig, {k: v for k, v in suite.pretrain.items() if k != "method_args"})
    path, report = import_checkpoint(ext.file, ext.format, ext.backbone, key_map=parse_key_map(ext.key_map),
                                     root=Path(pretrain.output_dir) / "external")
    protocols = [(None, evaluation)] + ([(ext.paper_protocol, eval_config(suite, ext.paper_protocol))] if ext.paper_protocol else [])
    return [_evaluate_external(ext, path, report, seed, suite, pretrain, paper, config, parent_id, force, tracking_uri)
            for seed in suite.seeds for paper, config in protocols]


def _evaluate_external(ext: ExternalCheckpoint, path: Path, report, seed: int, suite: Suite, pretrain: PretrainConfig,
                       paper: str | None, evaluation, parent_id: str, force: bool, tracking_uri) -> dict:
    from backbones import create_backbone
    from core.distributed import init_distributed
    from core.tracking import Tracker
    from evaluation.evaluate import evaluate_encoder, protocol_tags
    from harness.train import load_checkpoint, saved_training, train_classifier

    experiment = suite.experiment or suite.name
    tags = protocol_tags(evaluation)
    key = _skip_key("external", report.sha256, ext.format, ext.backbone, sorted(ext.key_map), paper, seed, suite.data,
                    sorted(tags.items()))
    done = _finished(experiment, key, tracking_uri)
    if done and not force:
        return {"row": report.label, "run_id": done, "skipped": True}
    saved = load_checkpoint(path, needs=("backbone", "state_dict"))
    trained = saved_training(saved, path)
    encoder = create_backbone(ext.backbone)
    encoder.load_state_dict(saved["state_dict"])
    name = f"{path.parent.name}{f'-paper-{paper}' if paper else ''}-s{seed}"
    run_tags = {"suite": suite.name, "row": report.label, "kind": "external", "method": "external", "backbone": ext.backbone,
                "seed": str(seed), "suite_key": key, "checkpoint.name": Path(ext.file).name, "checkpoint.sha256": report.sha256,
                "checkpoint.format": ext.format, **({"paper_protocol": paper} if paper else {}), **tags}
    with Tracker(experiment, name, tracking_uri=tracking_uri, parent_run_id=parent_id, tags=run_tags) as tracker:
        tracker.log_params({"checkpoint": {**saved["source"], "dropped": len(report.dropped)},
                            **({"input": trained.input.to_dict()} if trained is not None else {})})
        metrics = evaluate_encoder(encoder, data=suite.data, config=evaluation, device=init_distributed(pretrain.device).device,
                                   seed=seed, cache_dir=Path(pretrain.output_dir) / "features", finetune_from=str(path),
                                   backbone=ext.backbone, output_dir=pretrain.output_dir, run_name=name, trained=trained,
                                   trainer=train_classifier)
        tracker.log_metrics({**metrics, "pretrain/params": sum(p.numel() for p in encoder.parameters())}, step=0)
        return {"row": report.label, "run_id": tracker.run_id, "skipped": False}


def _report(suite: Suite, experiment: str, parent, tracking_uri, command: str) -> dict:
    """Print the comparison table of the experiment's finished runs and log it to the parent run.

    Reads the whole experiment, not only this invocation's children: runs skipped as finished
    belong to an earlier parent, and the report keeps the latest run per (row, backbone, seed)."""
    from harness.report import format_table_text, report_experiment
    from core.tracking import runtime_tags

    out_dir = Path(suite.pretrain.get("output_dir", "runs")) / "report"
    env = runtime_tags()
    caption = [f"produced by: `{command}`", f"vsbench commit: {env.get('git.commit', 'unknown')}",
               f"device: {env.get('device', 'unknown')}; torch {env.get('torch.version', '?')}"]
    paths = report_experiment(experiment, tracking_uri=tracking_uri, out_dir=out_dir, caption_lines=caption)
    print(format_table_text(paths["table"]))
    for key in ("markdown", "csv", "recall_plot"):
        if paths.get(key):
            parent.log_artifact(paths[key])
    return {k: str(v) for k, v in paths.items() if k != "table" and v is not None}
