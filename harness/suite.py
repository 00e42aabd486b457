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

    tracking_uri = "http://login1:5000" # optional: the MLflow server every job reports to

    [slurm]                             # harness.launch.SlurmSettings: each job's resources (--launcher slurm)
    partition = "gpu"
    gpus_per_node = 8
    time_min = 1440

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

A suite is a list of jobs (:class:`Job`): each pretraining run with its evaluation, each reference
row on one backbone and seed, each external checkpoint row for one seed. ``vsbench run SUITE`` runs
them here one after another; ``--launcher slurm`` submits each as a SLURM job (:mod:`harness.launch`),
which runs the same function (:func:`run_job`).

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
from harness.launch import SlurmSettings

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
    low_shot: list[int] = field(default_factory=list)  # fine-tune rows on N labelled training videos, per encoder
    tracking_uri: str | None = None  # the MLflow store or server (--tracking-uri and MLFLOW_TRACKING_URI when unset)
    slurm: SlurmSettings = field(default_factory=SlurmSettings)  # job resources for --launcher slurm
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
    _check_low_shot(suite, path)
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


def _check_low_shot(suite: Suite, path: Path) -> None:
    """``low_shot``: distinct positive video counts; and the subset is the fine-tune protocol's, not the data's."""
    bad = [n for n in suite.low_shot if isinstance(n, bool) or not isinstance(n, int) or n < 1]
    if bad or len(set(suite.low_shot)) != len(suite.low_shot):
        raise ConfigError(f"{path}: low_shot = {suite.low_shot}: expected distinct positive integers, the numbers of labelled "
                          "training videos to fine-tune on (e.g. low_shot = [1000])")
    for key in ("train_videos", "train_videos_seed"):
        if getattr(suite.data, key) != getattr(DataConfig(), key):
            raise ConfigError(f"{path}: data.{key}: a suite pretrains and evaluates on the whole split; fine-tuning on a "
                              "subset is low_shot = [N] (extra rows) or eval.finetune.train_videos = N (every row)")


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
    _check_against_data(suite, rows)


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


def _check_against_data(suite: Suite, rows: list[tuple[str, str, dict]]) -> None:
    """The evaluation settings against the data: the split, the gallery size, decodable videos,
    clips that fit the shortest video."""
    from evaluation.evaluate import eval_data
    from core.data.datasets import DatasetError

    evaluation = eval_config(suite)
    _check_eval_split(suite, evaluation)
    if not Path(suite.data.path).exists():
        raise DatasetError(f"{suite.path}: data.path = {suite.data.path!r}: no such file or folder")
    try:
        train, test = eval_data(suite.data, evaluation)
    except ConfigError as err:
        raise ConfigError(f"{suite.path}: {err}") from err
    _check_clip_spans(suite, rows, [r for split in (train, test) for r in split if r.ok], evaluation.features)
    readable = sum(r.ok for r in train)
    if suite.low_shot and max(suite.low_shot) > readable:
        raise ConfigError(f"{suite.path}: low_shot = {suite.low_shot}: the train split of {suite.data.path} has {readable} readable "
                          f"videos; valid: every N at most {readable}")


def _check_clip_spans(suite: Suite, rows: list[tuple[str, str, dict]], videos: list, features) -> None:
    """Every pretrained row's evaluation clips fit the shortest video evaluated: evaluation never
    loops or pads a video, so a longer clip would stop that row's evaluation after it has trained.
    A row is evaluated at ``eval.features.stride``, or else at the stride it trains at."""
    from backbones import create_backbone
    from core.data.encoder_input import training_stride
    from core.data.request import clip_span
    from methods.base import create_method

    if not videos:
        return
    shortest = min(videos, key=lambda r: r.num_frames)
    for row, method, ablation_args in rows:
        stride = features.stride
        if stride is None:
            args = {**suite.pretrain.get("method_args", {}), **suite.overrides.get(method, {}).get("method_args", {}), **ablation_args}
            spec = create_method(method, create_backbone("r3d_tiny"), dataset_size=len(videos), overrides=args).data_spec()
            stride = training_stride(spec.stride)
        span = clip_span(features.frames, stride)
        if span > shortest.num_frames:
            raise ConfigError(f"{suite.path}: row {row!r}: its evaluation clips of eval.features.frames = {features.frames} frames at "
                              f"stride {stride} span {span} frames, but {shortest.path} has {shortest.num_frames}; evaluation never "
                              f"loops a video: make (frames - 1) x stride + 1 at most {shortest.num_frames} (eval.features.frames, "
                              f"eval.features.stride, or the stride the row trains at)")


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
    lines += [f"low_shot: every row but random init again as '<row> (fine-tune on N)', N in {suite.low_shot}, fine-tuned on N "
              "labelled training videos" for _ in suite.low_shot[:1]]
    lines += ["eval (every run):", f"  {json.dumps(to_dict(eval_config(suite)), sort_keys=True)}"]
    return "\n".join(lines)


@dataclass(frozen=True)
class Job:
    """One unit of a suite's work, run by one process (group): a pretraining run with its evaluation
    (``run``), a reference row on one backbone and seed, or an external checkpoint (``checkpoint``,
    its index in the suite, imported to ``encoder`` beforehand) evaluated for one seed, with the
    suite's protocols or, with ``paper``, that paper's. ``name`` is unique in the suite: it names the
    job's run folder, its log and its store on a cluster."""

    name: str
    kind: str  # pretrain | reference | external
    row: str
    run: SuiteRun | None = None
    backbone: str = ""
    seed: int = 0
    checkpoint: int = -1
    encoder: str = ""
    report: object = None  # backbones.checkpoints.LoadReport of the external checkpoint
    paper: str | None = None


def suite_jobs(suite: Suite, runs: list[SuiteRun]) -> list[Job]:
    """Every job of the suite in the order a local suite runs them: pretraining runs, reference rows,
    external checkpoint rows (each file imported once, here, not once per seed or per job)."""
    jobs = [Job(item.config.run_name, "pretrain", item.row, run=item) for item in runs]
    jobs += [Job(_reference_name(row, backbone, seed), "reference", row, backbone=backbone, seed=seed)
             for backbone in reference_backbones(suite, runs) for seed in suite.seeds for row in suite.references]
    for index, ext in enumerate(suite.checkpoints):
        path, report = _import(ext, suite)
        for seed in suite.seeds:
            for paper in (None, ext.paper_protocol) if ext.paper_protocol else (None,):
                name = f"{path.parent.name}{f'-paper-{paper}' if paper else ''}-s{seed}"
                jobs.append(Job(name, "external", report.label, backbone=ext.backbone, seed=seed, checkpoint=index,
                                encoder=str(path), report=report, paper=paper))
    return jobs


def run_job(job: Job, suite: Suite, evaluation, parent_id: str | None, force: bool, tracking_uri: str | None) -> list[dict]:
    """Run one job (a local suite calls this for each job in turn; a cluster job calls it once): its
    row, then its low-shot rows (``low_shot``), each skipped when it finished before."""
    with _foreign_checkpoint_needs_force(job.name):
        if job.kind == "pretrain":
            record = _pretrain_and_evaluate(job.run, suite, evaluation, parent_id, force, tracking_uri)
            config = job.run.config
            encoder, backbone, method = str(Path(config.output_dir) / config.run_name / "encoder.pt"), config.backbone, config.method
        elif job.kind == "reference":
            record = _reference_row(job.row, job.backbone, job.seed, suite, evaluation, parent_id, force, tracking_uri)
            encoder, backbone, method = None, job.backbone, job.row
        else:
            ext = suite.checkpoints[job.checkpoint]
            protocols = eval_config(suite, job.paper) if job.paper else evaluation
            pretrain = from_dict(PretrainConfig, {k: v for k, v in suite.pretrain.items() if k != "method_args"})
            record = _evaluate_external(ext, Path(job.encoder), job.report, job.seed, suite, pretrain, job.paper, protocols, parent_id,
                                        force, tracking_uri)
            encoder, backbone, method = job.encoder, job.backbone, "external"
        if job.row == "random init" or job.paper:  # fine-tuning random weights is the supervised row; a paper protocol is its own
            return [record]
        return [record] + [_low_shot_row(n, job, encoder, backbone, method, suite, evaluation, parent_id, force, tracking_uri)
                           for n in suite.low_shot]


def job_entry(suite_path: str, contents: dict, job: Job, parent_id: str | None, force: bool, tracking_uri: str) -> list[dict]:
    """What a cluster job runs (:class:`harness.launch.SuiteJob`): the suite read again from its
    resolved contents (checked whole before it was submitted), then :func:`run_job`."""
    from core.data.cache import reserve as reserve_frame_cache

    suite = load_suite(suite_path, contents=contents)
    reserve_frame_cache(suite.data.cache_gb)  # as a local suite does before its first job (reference rows evaluate at once)
    return run_job(job, suite, eval_config(suite), parent_id, force, tracking_uri)


def _low_shot_row(n: int, job: Job, encoder: str | None, backbone: str, method: str, suite: Suite, evaluation, parent_id, force: bool,
                  tracking_uri) -> dict:
    """The row ``<row> (fine-tune on N)``: the job's encoder (``None``: from scratch, the supervised
    row) fine-tuned by the suite's protocol on ``n`` labelled training videos (its fixed,
    class-balanced draw), tested on the whole test split; its own MLflow run, skipped when that
    finished before with the same encoder file."""
    from backbones.checkpoints import file_sha256
    from core.distributed import init_distributed
    from core.tracking import Tracker
    from evaluation.finetune import run_finetune
    from harness.train import load_checkpoint, saved_training, train_classifier

    if encoder and not Path(encoder).exists():  # the row finished before, and its run folder was cleared since
        raise ConfigError(f"low_shot = {suite.low_shot}: row {job.row!r} needs its encoder {encoder}, which is gone; "
                          "rerun the suite with --force to train it again")
    protocol = dataclasses.replace(evaluation.finetune, train_videos=n)
    from harness.report import low_shot_label

    experiment, name, row = suite.experiment or suite.name, f"{job.name}-lowshot{n}", low_shot_label(job.row, n)
    key = _skip_key("low_shot", job.name, n, suite.data, protocol.hash(), file_sha256(encoder) if encoder else "scratch")
    if (done := _finished(experiment, key, tracking_uri)) and not force:
        return {"row": row, "run_id": done, "skipped": True}
    pretrain = from_dict(PretrainConfig, {k: v for k, v in suite.pretrain.items() if k != "method_args"})
    if force:
        _start_afresh(pretrain.output_dir, name, tracking_uri=tracking_uri)
    trained = saved_training(load_checkpoint(Path(encoder)), encoder) if encoder else None
    tags = {"suite": suite.name, "row": row, "kind": "low_shot", "method": method, "backbone": backbone, "seed": str(job.seed),
            "suite_key": key, "low_shot": str(n), "protocol.finetune": protocol.hash()}
    with Tracker(experiment, name, tracking_uri=tracking_uri, parent_run_id=parent_id, tags=tags) as tracker:
        metrics, _ = run_finetune(protocol, backbone=backbone, data=suite.data, init_encoder=encoder, seed=job.seed,
                                  device=str(init_distributed(pretrain.device).device), output_dir=pretrain.output_dir, run_name=name,
                                  workers=evaluation.workers, trainer=train_classifier, trained=trained)
        tracker.log_metrics({f"eval/finetune/{k}": v for k, v in metrics.items()}, step=0)
        return {"row": row, "run_id": tracker.run_id, "skipped": False}


def run_suite(path: str | Path, *, contents: dict | None = None, force: bool = False, tracking_uri: str | None = None,
              command: str | None = None, launcher: str = "local", wait: bool = False) -> list[dict]:
    """Pretrain and evaluate every job of a suite under one parent MLflow run; returns one record per
    job run here (and, when the table was made, one with its files).

    ``contents``: the suite file's TOML table as changed by ``--set``. ``force``: rerun finished runs,
    each from scratch (:func:`_start_afresh`). ``command``: the command line that started the suite
    (default ``vsbench run <path>``), written under the table and tagged on the parent run; with
    ``--set`` options it names them, and the parent run holds the suite as resolved
    (``suite_resolved.json``), so a table never hides what changed its settings. ``launcher``:
    ``local`` runs the jobs here one after another; ``slurm`` and ``submitit-local`` submit those not
    done or under way (:mod:`harness.launch`) and, with ``wait``, wait for them and make the table."""
    from core.data.cache import reserve as reserve_frame_cache
    from core.tracking import Tracker
    from core.tracking_sync import sync_if_needed

    suite, runs = plan_suite(path, contents=contents)
    tracking_uri = tracking_uri or suite.tracking_uri
    sync_if_needed(tracking_uri)  # runs that ended while the server was down count as done
    evaluation = eval_config(suite)
    experiment = suite.experiment or suite.name
    command = command or f"vsbench run {path}"
    resolved = contents if contents is not None else load_toml(path)
    records = []
    memo = RunMemo(Path(suite.pretrain.get("output_dir", "runs")) / SUITE_RUN, _suite_hash(resolved))
    if force:
        _end_abandoned(memo, "the suite's parent run", tracking_uri)
    jobs = suite_jobs(suite, runs)
    with Tracker(experiment, f"suite-{suite.name}", tracking_uri=tracking_uri, continue_run_id=None if force else memo.run_id(),
                 tags={"suite": suite.name, "kind": "suite", "suite.command": command, "suite.launcher": launcher}) as parent:
        memo.remember(parent.run_id)
        parent.log_artifact(path)
        parent.log_dict(resolved, "suite_resolved.json")
        if launcher == "local":
            reserve_frame_cache(suite.data.cache_gb)  # before the first job: the reference rows evaluate without pretraining
            for i, job in enumerate(jobs, 1):
                log.info("[%d/%d] %s", i, len(jobs), job.name)
                records += run_job(job, suite, evaluation, parent.run_id, force, tracking_uri)
        else:
            ended, failed = _launch(suite, jobs, resolved, parent.run_id, force, tracking_uri, launcher, wait)
            records += [{"row": name, "failed": True} for name in failed]
            if not ended:
                return records
        records.append({"row": "table", "report": _report(suite, experiment, parent, tracking_uri, command)})
    return records


def _suite_hash(resolved: dict) -> str:
    """The suite's configuration as its results depend on it: where and how its jobs run (``[slurm]``)
    is left out, so changing a partition neither starts a new parent run nor loses track of jobs."""
    return config_hash({k: v for k, v in resolved.items() if k != "slurm"})


def _launch(suite: Suite, jobs: list[Job], resolved: dict, parent_id: str | None, force: bool, tracking_uri: str | None,
            launcher: str, wait: bool) -> tuple[bool, list[str]]:
    """Submit the jobs that are neither done nor under way (harness.launch); returns whether every
    job has ended, so the table can be made (``wait``), and the jobs that failed."""
    from core.tracking_store import absolute_sqlite, is_local, resolve_tracking_uri
    from core.tracking_sync import merge_stores
    from harness import launch

    settings = suite.slurm
    folder = launch.job_folder(settings, suite.pretrain.get("output_dir", "runs"))
    book = launch.JobBook(folder, _suite_hash(resolved))
    main_uri = absolute_sqlite(resolve_tracking_uri(tracking_uri), Path.cwd())
    server = not is_local(main_uri)
    entries = book.read()
    states = launch.job_states({job.name: entries[job.name] for job in jobs if job.name in entries})
    for name, state in states.items():
        if state == "failed":
            print(f"job {name} (scheduler job {entries[name]['job_id']}) failed; its log: {launch.log_file(entries[name])}; "
                  "submitting it again")
    running = [name for name, state in states.items() if state == "under way"]
    if force and running:
        raise ConfigError(f"--force: {len(running)} job(s) of this suite are under way ({', '.join(running[:5])}"
                          f"{' ...' if len(running) > 5 else ''}; see {book.path}); forcing would start them a second time "
                          "beside the first: cancel them (scancel) and call again")
    pending = [job for job in jobs if force or states.get(job.name) not in ("under way", "done")]
    if not server:
        merge_stores([folder / launch.STORES / job.name / "mlflow.db" for job in jobs if states.get(job.name) in ("done", "failed")
                      and (folder / launch.STORES / job.name / "mlflow.db").exists()], main_uri)

    def cluster_job(job: Job) -> launch.SuiteJob:
        arguments = {"suite_path": suite.path, "contents": resolved, "job": job, "parent_id": parent_id, "force": force,
                     "tracking_uri": main_uri if server else f"sqlite:///{folder / launch.STORES / job.name / 'mlflow.db'}"}
        return launch.SuiteJob(job_entry, arguments, job.name, str(folder / launch.STORES / job.name))

    submitted = launch.submit(launcher, settings, folder, book.suite_hash, [cluster_job(job) for job in pending]) if pending else {}
    print(f"suite {suite.name}: {len(submitted)} job(s) submitted ({launcher}), {len(running)} under way, "
          f"{sum(s == 'done' for s in states.values()) if not force else 0} done before; logs and job records in {folder}")
    if not wait:
        print(f"the table: `vsbench run {suite.path} --launcher {launcher} --wait` (waits for the jobs), or "
              f"`vsbench table {suite.experiment or suite.name}{'' if server else f' --job-stores {folder}'}` once they ended")
        return False, []
    final = launch.wait(book, [job.name for job in jobs], settings.poll_s if launcher == "slurm" else 0.5)
    if not server:
        merge_stores(launch.job_stores(folder), main_uri)
    failed = [name for name, state in final.items() if state == "failed"]
    for name in failed:
        print(f"job {name} failed; its log: {launch.log_file(book.read()[name])}")
    return True, failed


def _import(ext: ExternalCheckpoint, suite: Suite):
    from backbones.checkpoints import parse_key_map
    from harness.external import import_checkpoint

    output_dir = suite.pretrain.get("output_dir", "runs")
    return import_checkpoint(ext.file, ext.format, ext.backbone, key_map=parse_key_map(ext.key_map), root=Path(output_dir) / "external")


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
    name = f"{path.parent.name}{f'-paper-{paper}' if paper else ''}-s{seed}"  # = Job.name
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
