"""The ``vsbench`` command line.

    vsbench run SUITE     run a benchmark suite (methods x backbones x seeds), tracked in MLflow
    vsbench pretrain      pretrain one method on one data set
    vsbench eval          evaluate an encoder.pt with the shared protocols
    vsbench table         the comparison table of an experiment, from the MLflow store
    vsbench sync          copy runs waiting in the outbox store (server was down) to the tracking server
    vsbench methods       list the registered methods and their paper recipes
    vsbench backbones     list the backbones with parameters and GMACs at 16x112x112
    vsbench data synth    generate the MotionShapes data set (UCF101 layout)
    vsbench data check    scan a data set: counts per class and split, corrupt and short videos
    vsbench data shortcuts  can one frame tell the class (an appearance shortcut), or only motion?
    vsbench data flow     compute the optical-flow cache of a data set once
    vsbench data mds      screen clip starts by motion change (MSCL), from the flow cache

Every subcommand explains itself with ``--help``. User errors (a bad split file, an unknown
option value) print one line naming the file, line or option at fault and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from core import __version__


#: The checkpoint formats vsbench ships (backbones.list_formats(); named here so --help imports no torch).
CHECKPOINT_FORMATS = ("iic", "mlfo", "dclr", "mscl", "torchvision", "state_dict")


class UserError(Exception):
    """An error in what the user asked for; printed without a traceback."""


def _add_data_synth(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="generate MotionShapes (motion classes, random appearance) in UCF101's layout",
        description="Generate MotionShapes: videos whose class is the motion of the objects (translation, rotation, "
        "growth, orbit, oscillation), never their appearance. Written as MPEG-4 .avi files with classInd.txt and "
        "group-based train/test lists, exactly like UCF101, so every UCF101 tool reads it. Resumable: videos already "
        "written are kept.",
    )
    p.add_argument("--preset", default="tiny", help="size preset: tiny (tests), small (smoke suite), bench (CPU benchmark, 32x32), standard (GPU suites); default tiny")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--seed", type=int, help="generation seed (default: the preset's)")
    p.add_argument("--scene-bias", type=float, help="0..1: tie background family to class in the train split with this probability")
    for name in ("classes", "groups", "clips-per-group", "frames", "height", "width"):
        p.add_argument(f"--{name}", type=int, help=f"override the preset's {name.replace('-', '_')}")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args) -> int:
    from core.data.synthetic import PRESETS, generate_motionshapes

    if args.preset not in PRESETS:
        raise UserError(f"--preset: unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    overrides = {
        f: getattr(args, f)
        for f in ("seed", "scene_bias", "classes", "groups", "clips_per_group", "frames", "height", "width")
        if getattr(args, f) is not None
    }
    config = dataclasses.replace(PRESETS[args.preset], **overrides)
    out = generate_motionshapes(args.out, config, workers=args.workers)
    print(f"MotionShapes ({args.preset}) written to {out}")
    return 0


def _data_formats() -> tuple[str, ...]:
    """The data set formats (core.data.datasets.FORMATS), imported when a parser is built."""
    from core.data.datasets import FORMATS

    return FORMATS


def _add_dataset_args(p) -> None:
    p.add_argument("data", help="data set: the root of a UCF101/HMDB51/Something-Something v2/Diving48/Kinetics copy "
                   "(videos + official list files) or a CSV list")
    p.add_argument("--format", default="auto", choices=_data_formats(), help="data set format (default: detect)")


def _add_data_check(sub) -> None:
    p = sub.add_parser(
        "check",
        help="scan a data set and report counts, frame statistics, corrupt and too-short videos",
        description="Verify every video of a data set (frame counts are cached in vsbench_index.json beside the data) and "
        "print videos per class and split, frame-count statistics, and every corrupt or too-short video by name. "
        "Exit status 1 when any video is corrupt or too short.",
    )
    _add_dataset_args(p)
    p.add_argument("--split", default="all", help="official split to check: 1, 2, 3 or all (default all)")
    p.add_argument("--min-frames", type=int, default=16, help="videos with fewer frames are reported as too short (default 16)")
    p.set_defaults(func=_cmd_check)


def _cmd_check(args) -> int:
    from core.data.check import check_dataset

    if args.split not in ("1", "2", "3", "all"):
        raise UserError(f"--split: expected 1, 2, 3 or all, got {args.split!r}")
    splits = [1, 2, 3] if args.split == "all" else [int(args.split)]
    report = check_dataset(args.data, format=args.format, splits=splits, min_frames=args.min_frames)
    print(report.render())
    return 1 if report.problems else 0


def _add_data_shortcuts(sub) -> None:
    p = sub.add_parser(
        "shortcuts",
        help="check that one frame cannot tell the class and frame differences can (a motion benchmark's premise)",
        description="Train small 2D classifiers and test them: one on single frames (appearance) from the train split to "
        "the test split, one on single frames from half of the train split's videos to the other half (the same looks), "
        "and one on the clips' frame differences (motion). A data set without an appearance shortcut leaves both frame "
        "classifiers at chance (their 95% bootstrap intervals reach chance) and the motion classifier far above it "
        "(2.5x chance). Exit status 1 when a shortcut is found or motion is not learnable.",
    )
    _add_dataset_args(p)
    p.add_argument("--split", type=int, default=1, help="official split (default 1)")
    p.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    p.add_argument("--stride", type=int, default=2, help="temporal stride of the clips (default 2)")
    p.add_argument("--size", type=int, nargs=2, default=(32, 32), metavar=("H", "W"),
                   help="frame size to decode at; decord needs W to be a multiple of 32 (default 32 32)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs of each classifier (default 20)")
    p.add_argument("--workers", type=int, default=2, help="data loader processes (default 2)")
    p.set_defaults(func=_cmd_shortcuts)


def _cmd_shortcuts(args) -> int:
    from core.data.shortcuts import ShortcutConfig, shortcut_check

    try:
        config = ShortcutConfig(split=args.split, frames=args.frames, stride=args.stride, size=tuple(args.size), epochs=args.epochs)
    except ValueError as err:
        raise UserError(str(err)) from err
    report = shortcut_check(args.data, format=args.format, config=config, workers=args.workers)
    print(report.render())
    return 0 if report.passed else 1


def _add_data_flow(sub) -> None:
    p = sub.add_parser(
        "flow",
        help="compute the optical-flow cache of a data set (quantized JPEG u/v frames)",
        description="Compute optical flow for every video of a data set once and store it as quantized JPEG frames in "
        "the common u/<video>/frame000001.jpg, v/<video>/... layout. Resumable: finished videos are skipped. "
        "Precomputed flow folders in that layout can be used as they are.",
    )
    _add_dataset_args(p)
    p.add_argument("--out", type=Path, help="flow cache folder (default: <data>/flow)")
    p.add_argument("--algorithm", default="dis", choices=("dis", "tvl1"), help="OpenCV DIS (default) or TV-L1 (needs opencv-contrib)")
    p.add_argument("--bound", type=float, default=20.0, help="flow is clipped to +-bound pixels before quantization (default 20)")
    p.add_argument("--short-side", type=int, help="resize frames to this short side before computing flow (default: as stored)")
    p.add_argument("--backend", default="decord", choices=("decord", "pyav"),
                   help="video decoder for the frames (default decord; both give the same frames)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    p.set_defaults(func=_cmd_flow)


def _cmd_flow(args) -> int:
    from core.data.datasets import open_dataset
    from core.data.modalities import compute_flow_cache

    videos = open_dataset(args.data, format=args.format, subset="all")
    out = args.out or Path(args.data) / "flow"
    pairs = [(r.path, Path(r.path).stem) for r in videos.records]
    summary = compute_flow_cache(pairs, out, algorithm=args.algorithm, bound=args.bound, short_side=args.short_side, workers=args.workers,
                                 backend=args.backend)
    failed = summary["failed"]
    print(f"flow cache at {out}: {len(summary['computed'])} videos computed, {len(summary['skipped_existing'])} already present, {len(failed)} failed")
    return _failures(failed)


def _failures(failed: dict[str, str]) -> int:
    """Print each video a data command could not process, with its reason; the exit code (1 if any)."""
    for key, reason in failed.items():
        print(f"  failed: {key}: {reason}")
    return 1 if failed else 0


def _add_data_mds(sub) -> None:
    p = sub.add_parser(
        "mds",
        help="screen clip starts by motion change (MSCL's motion differential sampling), from the flow cache",
        description="Score every candidate clip start of every video from its cached optical flow (flow-gradient "
        "attention x Middlebury colour-coded flow, mean frame-to-frame change, averaged over the clip's frames) and "
        "keep the starts scoring above the video's median (MSCL, ECCV 2022). Writes <flow root>/mds.json, which "
        "the 'mds' training sampler (MSCL's default) reads. Needs the flow cache of `vsbench data flow` first.",
    )
    _add_dataset_args(p)
    p.add_argument("--flow-root", type=Path, help="flow cache folder (default: <data>/flow)")
    p.add_argument("--clip-len", type=int, default=8, help="frames per scored clip (default 8, MSCL's clip length)")
    p.add_argument("--stride", type=int, default=16,
                   help="raw frames between a clip's scored frames (default 16, MSCL's training stride; "
                   "the released screening used 8)")
    p.add_argument("--block", type=int, default=28, help="attention tile size in flow pixels (default 28)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    p.set_defaults(func=_cmd_mds)


def _cmd_mds(args) -> int:
    from core.data.datasets import open_dataset
    from core.data.mds import MDS_NAME, compute_mds

    videos = open_dataset(args.data, format=args.format, subset="all")
    root = args.flow_root or Path(args.data) / "flow"
    if not (root / "flow_meta.json").is_file():
        raise UserError(f"{root} is not a flow cache (no flow_meta.json); compute it first with `vsbench data flow {args.data}`")
    keys = [Path(r.path).stem for r in videos.records if r.ok]
    result = compute_mds(keys, root, clip_len=args.clip_len, stride=args.stride, block=args.block, workers=args.workers)
    failed = result["failed"]
    kept = sum(len(v["chosen"]) for v in result["videos"].values())
    total = sum(v["num_frames"] for v in result["videos"].values())
    print(f"{root / MDS_NAME}: {len(result['videos'])} videos scored, {kept} of {total} clip starts kept, {len(failed)} failed")
    return _failures(failed)


def _add_pretrain(commands) -> None:
    p = commands.add_parser(
        "pretrain",
        help="pretrain one method on one data set",
        description="Pretrain a registered method. Settings come from the method's paper recipe, then from --config "
        "(a TOML file with PretrainConfig keys), then from the options below. The run is tracked in MLflow "
        "(sqlite:///mlflow.db by default) and checkpointed every epoch; --resume continues a killed run.",
    )
    p.add_argument("--config", type=Path, help="TOML file of PretrainConfig keys (method, backbone, [data], epochs, lr, ...)")
    p.add_argument("--method", help="registered method name (see `vsbench methods`)")
    p.add_argument("--backbone", help="registered backbone name (see `vsbench backbones`)")
    p.add_argument("--data", help="data set path: UCF101/HMDB51 root or CSV list")
    p.add_argument("--epochs", type=int, help="epochs (the recipe's milestones scale with it)")
    p.add_argument("--batch-size", type=int, help="global batch per optimizer step")
    p.add_argument("--lr", type=float, help="base learning rate")
    p.add_argument("--steps-per-epoch", type=int, help="cap optimizer steps per epoch (small budgets)")
    p.add_argument("--workers", type=int, help="data loader worker processes")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--output-dir", help="where run folders (checkpoints, encoder weights) go (default runs/)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any PretrainConfig key, dotted for nested ones, value in TOML syntax (e.g. --set method_args.queue_size=256)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint if there is one")
    p.set_defaults(func=_cmd_pretrain)


_PRETRAIN_FLAGS = {"method": "method", "backbone": "backbone", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
                   "steps_per_epoch": "steps_per_epoch", "device": "device", "seed": "seed", "output_dir": "output_dir",
                   "tracking_uri": "tracking_uri"}


def _parse_set(items: list[str]) -> dict:
    from core.config import ConfigError, tomllib

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value  # a bare word is a string
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = parsed
    return out


def _cmd_pretrain(args) -> int:
    from core.config import PretrainConfig, from_dict, load_toml, merge_tables
    from harness.train import pretrain

    values = load_toml(args.config) if args.config else {}
    values = merge_tables(values, {key: getattr(args, flag) for flag, key in _PRETRAIN_FLAGS.items() if getattr(args, flag) is not None})
    if args.data or args.workers is not None:
        data = {"path": args.data} if args.data else {}
        data |= {"workers": args.workers} if args.workers is not None else {}
        values = merge_tables(values, {"data": data})
    values = merge_tables(values, _parse_set(args.set))
    config = from_dict(PretrainConfig, values, where=str(args.config) if args.config else "")
    if not config.data.path:
        raise UserError("no data set: pass --data PATH or set data.path in --config")
    result = pretrain(config, resume=args.resume, config_file=args.config)
    from core.distributed import rank

    if rank() != 0:
        return 0
    print(f"pretrained {config.method} on {config.data.path}: {result.steps} steps, {result.wall_time_s:.1f} s, "
          f"{result.clips_per_s:.1f} clips/s, final loss {result.final_loss:.4f}")
    print(f"encoder weights: {result.encoder_path}; MLflow run {result.run_id}")
    return 0


def _add_run(commands) -> None:
    from harness.launch import LAUNCHERS

    p = commands.add_parser(
        "run",
        help="run a benchmark suite (TOML) end to end",
        description="Run every (method or ablation row, backbone, seed) of a suite file under one parent MLflow run. "
        "Before the first run trains, the whole suite is checked: every key of every row, the backbones, the evaluation "
        "split against data.split, every k of kNN and retrieval against the gallery (the train split), and every video of "
        "the evaluated train and test lists (probed, not decoded). Runs already finished with the same configuration are "
        "skipped unless --force. The jobs run here one after another, or each as a SLURM job (--launcher slurm; "
        "docs/scale.md). Suites ship in benchmarks/suites/.",
    )
    p.add_argument("suite", type=Path, help="suite file, e.g. benchmarks/suites/smoke.toml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a key of the suite file, dotted for nested ones, value in TOML syntax "
                   "(e.g. --set pretrain.epochs=1 --set seeds=[0,1] --set eval.knn.k=10)")
    p.add_argument("--force", action="store_true",
                   help="rerun runs that finished before, each from scratch: the last.pt and encoder.pt of its run folder "
                   "(and of its fine-tune folder) are deleted before it trains, so no earlier checkpoint is resumed")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything as a run would, print the runs with their resolved configs and exit; nothing is "
                   "trained or written to MLflow or the run folders (opening the data may refresh its frame-count index, "
                   "vsbench_index.json), and whether a run finished before is not looked up")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the suite's tracking_uri, MLFLOW_TRACKING_URI or "
                   "sqlite:///mlflow.db)")
    p.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local (default): run the jobs here, one after another; slurm: submit each job not done or under way "
                   "as a SLURM job through submitit, with the suite's [slurm] resources (--set slurm.partition=gpu "
                   "--set slurm.gpus_per_node=8 ...; docs/scale.md), and return; submitit-local: the same path with each job a "
                   "process on this machine. Calling it again is safe: jobs under way are not submitted twice")
    p.add_argument("--wait", action="store_true",
                   help="with --launcher slurm or submitit-local: wait for the jobs to end, then print the table")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args) -> int:
    from core.config import load_toml, merge_tables
    from harness.suite import describe_plan, plan_suite, run_suite

    contents = merge_tables(load_toml(args.suite), _parse_set(args.set))
    if args.dry_run:
        print(describe_plan(*plan_suite(args.suite, contents=contents, dry_run=True)))
        return 0
    options = [part for value in args.set for part in ("--set", value)] + (["--force"] if args.force else [])
    command = shlex.join(["vsbench", "run", str(args.suite), *options])
    if args.wait and args.launcher == "local":
        raise UserError("--wait waits for submitted jobs: use it with --launcher slurm or submitit-local")
    records = run_suite(args.suite, contents=contents, force=args.force, tracking_uri=args.tracking_uri, command=command,
                        launcher=args.launcher, wait=args.wait)
    runs = [r for r in records if "run_id" in r]
    if args.launcher == "local":
        done = sum(not r["skipped"] for r in runs)
        print(f"suite {args.suite}: {done} runs done now, {len(runs) - done} skipped (finished before)")
    for r in records:
        if "report" in r:
            print(f"table: {', '.join(r['report'].values())}")
    return 1 if any(r.get("failed") for r in records) else 0


def _add_eval(commands) -> None:
    p = commands.add_parser(
        "eval",
        help="evaluate an encoder.pt with the shared protocols (retrieval, linear, kNN, probes, fine-tune)",
        description="Evaluate a pretrained encoder (the encoder.pt of a run) on a data set's split: retrieval, linear "
        "probe, kNN and motion probes from one feature extraction, and optionally fine-tuning. Metrics are printed "
        "and logged to MLflow as eval/<protocol>/<metric> with the protocol hashes as tags. The encoder is fed as it "
        "was trained: the stride and input convention (modality, value range, ImageNet normalisation) recorded in "
        "encoder.pt fill every protocol key left unset (features.stride, features.modality, features.normalize_input, "
        "features.value_range and the same finetune.* keys); a file without that record needs them set with --set. "
        "With --checkpoint-format, ENCODER is someone else's checkpoint (a paper's released weights, torchvision's, a "
        "plain state dict): it is loaded into --backbone with every key mapped and checked, written as an encoder.pt "
        "under runs/external/<file>-<hash>-<format>-<backbone>/ and evaluated like any encoder.",
    )
    p.add_argument("encoder", type=Path, help="encoder.pt written by `vsbench pretrain` or a suite, or a checkpoint file "
                   "in the --checkpoint-format")
    p.add_argument("--checkpoint-format", default=None, metavar="FORMAT",
                   help=f"read ENCODER as an external checkpoint: {', '.join(CHECKPOINT_FORMATS)} (docs/checkpoints.md)")
    p.add_argument("--backbone", help="with --checkpoint-format: the vsbench backbone it fits (see `vsbench backbones`)")
    p.add_argument("--key-map", action="append", default=[], metavar="PATTERN=REPLACEMENT",
                   help="with --checkpoint-format: rename keys matching the regular expression (whole key; \\1 groups) "
                   "before the format's own rules; an empty replacement drops them. Repeatable.")
    p.add_argument("--data", required=True, help="data set path (train split = gallery/training set, test split = queries)")
    p.add_argument("--format", default="auto", choices=_data_formats())
    p.add_argument("--protocols", default="retrieval,linear,knn,probe", help="comma list of retrieval, linear, knn, probe, finetune")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="EvalConfig keys, e.g. --set features.clips=5 --set features.layer=conv5_maxpool --set finetune.epochs=10")
    p.add_argument("--paper-protocol", metavar="PAPER",
                   help="evaluate as that paper's own scripts do (e.g. iic: conv5 max-pooled features of residual clips, "
                   "numpy's argsort order among ties): evaluation/paper_protocols/PAPER.toml under the --set values; "
                   "its hashes differ from the shared protocols', so a table shows the two side by side")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--experiment", default="vsbench-eval", help="MLflow experiment (default vsbench-eval)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from backbones import create_backbone
    from evaluation.evaluate import EvalConfig, eval_data, evaluate_encoder, paper_protocol, protocol_tags, resolve_all
    from core.config import DataConfig, from_dict, merge_tables
    from core.distributed import init_distributed
    from core.tracking import Tracker
    from harness.train import load_checkpoint, saved_training, train_classifier

    values = merge_tables({"protocols": [p for p in args.protocols.split(",") if p]}, _parse_set(args.set))
    if args.paper_protocol:
        values = merge_tables(paper_protocol(args.paper_protocol), values)
    config = from_dict(EvalConfig, values, where="eval")
    data = DataConfig(path=args.data, format=args.format, workers=config.workers)
    if args.checkpoint_format:
        args.encoder = _import_external(args)
    elif args.backbone or args.key_map:
        raise UserError("--backbone and --key-map describe an external checkpoint: give its --checkpoint-format too")
    saved = load_checkpoint(args.encoder, needs=("backbone", "state_dict"))
    trained = saved_training(saved, args.encoder)
    resolve_all(config, trained)  # a file without its training record needs the protocols to say stride and input
    eval_data(data, config)  # settings against the data, before an MLflow run opens or a feature is extracted
    encoder = create_backbone(saved["backbone"], **saved.get("backbone_args", {}))
    encoder.load_state_dict(saved["state_dict"])
    device = init_distributed(args.device).device
    source = {f"checkpoint.{k}": v for k, v in saved.get("source", {}).items() if k in ("name", "sha256", "format", "label")}
    tags = {"kind": "eval", "encoder": str(args.encoder), "backbone": saved["backbone"], **source, **protocol_tags(config),
            **({"paper_protocol": args.paper_protocol} if args.paper_protocol else {})}
    with Tracker(args.experiment, f"eval-{args.encoder.parent.name}", tracking_uri=args.tracking_uri, tags=tags) as tracker:
        if trained is not None:
            tracker.log_params({"training": trained.to_dict()})
        metrics = evaluate_encoder(encoder, data=data, config=config, device=device, finetune_from=str(args.encoder),
                                   backbone=saved["backbone"], output_dir=str(args.encoder.parent / "eval"), run_name="eval",
                                   trained=trained, trainer=train_classifier)
        tracker.log_metrics(metrics, step=0)
    for name, value in sorted(metrics.items()):
        print(f"{name:<32} {value:.4f}")
    return 0


def _import_external(args) -> Path:
    """``vsbench eval --checkpoint-format``: the external file made into an encoder.pt (harness.external)."""
    from backbones.checkpoints import CheckpointMismatch, parse_key_map
    from harness.external import import_checkpoint

    if not args.backbone:
        raise UserError(f"--checkpoint-format {args.checkpoint_format} needs --backbone (the vsbench backbone the checkpoint "
                        "fits; see `vsbench backbones`)")
    try:
        encoder, report = import_checkpoint(args.encoder, args.checkpoint_format, args.backbone, key_map=parse_key_map(args.key_map))
    except (CheckpointMismatch, ValueError, KeyError, FileNotFoundError) as err:
        raise UserError(str(err)) from err
    print(f"{report.label}: {report.loaded} tensors loaded into {args.backbone}; dropped (not used by evaluation): "
          f"{', '.join(report.dropped) or 'none'}")
    return encoder


def _add_table(commands) -> None:
    p = commands.add_parser(
        "table",
        help="build the comparison table of an experiment from the MLflow store",
        description="Rebuild the results table (methods and reference rows; recall@k, linear, fine-tune and kNN top-1, "
        "probes, cost columns; mean ± std over seeds; one column per protocol hash) from the finished runs of an "
        "experiment, print it and write it as markdown and CSV (plus the recall@k plot).",
    )
    p.add_argument("experiment", help="MLflow experiment, e.g. smoke")
    p.add_argument("--out", type=Path, default=Path("runs/report"), help="folder for table.md, table.csv and plots")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.add_argument("--job-stores", type=Path, metavar="FOLDER",
                   help="a suite's cluster folder (<output_dir>/slurm): first copy the runs of its jobs' own stores "
                   "(stores/<job>/mlflow.db, written when no tracking server was named) into the store read here")
    p.set_defaults(func=_cmd_table)


def _cmd_table(args) -> int:
    from harness.report import format_table_text, report_experiment
    from core.tracking import runs_frame

    if args.job_stores is not None:
        from core.tracking_store import resolve_tracking_uri
        from core.tracking_sync import merge_stores
        from harness.launch import job_stores

        stores = job_stores(args.job_stores)
        if not stores:
            raise UserError(f"{args.job_stores}: no job stores (stores/<job>/mlflow.db) in this folder; it is the [slurm] folder "
                            "of a suite run with --launcher slurm (default <output_dir>/slurm)")
        print(f"{len(merge_stores(stores, resolve_tracking_uri(args.tracking_uri)))} run(s) copied from {len(stores)} job store(s)")

    if runs_frame(args.experiment, tracking_uri=args.tracking_uri).empty:
        raise UserError(f"experiment {args.experiment!r} has no runs in {args.tracking_uri or 'the default store'}")
    paths = report_experiment(args.experiment, tracking_uri=args.tracking_uri, out_dir=args.out)
    print(format_table_text(paths["table"]))
    print(f"written: {', '.join(str(v) for k, v in paths.items() if k != 'table' and v is not None)}")
    return 0


def _add_sync(commands) -> None:
    p = commands.add_parser(
        "sync",
        help="copy the runs waiting in the outbox store to the tracking server",
        description="A run tracked for a server is written to mlflow-outbox.db in the working folder first and copied "
        "to the server when it starts, at every checkpoint and when it ends. Runs that could not be copied completely "
        "(the server was down) wait there; this copies every such run of the given server: the params, tags, metric "
        "points and status the server lacks, its parent link, and the artifacts of runs that ended, into the server "
        "run made by an earlier copy or a new one. A run copied after it ended is tagged vsbench.synced, so a second "
        "sync copies nothing. `vsbench run` does the same before its first run whenever the server answers.",
    )
    p.add_argument("--tracking-uri", help="the tracking server, http(s)://... (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--outbox", type=Path, default=None, help="the outbox store (default ./mlflow-outbox.db)")
    p.set_defaults(func=_cmd_sync)


def _cmd_sync(args) -> int:
    from core.tracking_store import OUTBOX_DB, is_local, resolve_tracking_uri
    from core.tracking_sync import sync_outbox

    uri = resolve_tracking_uri(args.tracking_uri)
    outbox = args.outbox or Path(OUTBOX_DB)
    if is_local(uri):
        raise UserError(f"--tracking-uri {uri!r} is a local store; sync copies runs to a tracking server (http://HOST:PORT)")
    if not outbox.exists():
        raise UserError(f"{outbox}: no such outbox store (runs tracked for a server are kept in ./{OUTBOX_DB} of the folder "
                        "they ran in)")
    try:
        copied = sync_outbox(uri, outbox=outbox)
    except ConnectionError as err:
        raise UserError(str(err)) from err
    print(f"{len(copied)} run(s) copied from {outbox} to {uri}")
    return 0


def _add_listings(commands) -> None:
    p = commands.add_parser("methods", help="list registered methods and their paper recipes",
                            description="List every registered method (built in and from the vsbench.methods entry point group).")
    p.set_defaults(func=_cmd_methods)
    p = commands.add_parser("backbones", help="list backbones with parameters and GMACs at 16x112x112",
                            description="List every registered backbone with its parameter count, forward GMACs for one "
                            "16x112x112 clip (FLOPs/2, counted by torch's FlopCounterMode) and feature dimension.")
    p.set_defaults(func=_cmd_backbones)


def _cmd_methods(args) -> int:
    from methods.base import get_method, list_methods

    for name in list_methods(include_reference=True):
        cls = get_method(name)
        r = cls.recipe
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:<10} {summary}{'  [reference row, uses labels]' if cls.reference else ''}")
        print(f"{'':<10} recipe: {r.optimizer} lr {r.lr} wd {r.weight_decay}, {r.schedule} {list(r.milestones)} x{r.gamma}, "
              f"{r.epochs} epochs, batch {r.batch_size}")
    return 0


def _cmd_backbones(args) -> int:
    import pandas as pd

    from backbones import describe_backbones

    table = pd.DataFrame(describe_backbones()).set_index("name")
    print(table.to_string())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vsbench",
        description="vsbench: pretrain and evaluate self-supervised video representation methods under one harness.",
    )
    parser.add_argument("--version", action="version", version=f"vsbench {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(commands)
    _add_pretrain(commands)
    _add_eval(commands)
    _add_table(commands)
    _add_sync(commands)
    _add_listings(commands)
    data = commands.add_parser("data", help="data sets: generate, check, precompute flow", description="Data set tools.")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    _add_data_synth(data_sub)
    _add_data_check(data_sub)
    _add_data_shortcuts(data_sub)
    _add_data_flow(data_sub)
    _add_data_mds(data_sub)
    data.set_defaults(func=lambda args: _usage(data))
    parser.set_defaults(func=lambda args: _usage(parser))
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vsbench`` console script."""
    from harness.launch import configure_logging

    configure_logging()
    args = build_parser().parse_args(argv)  # before the imports below (torch, timm), so that --help answers at once
    from core.config import ConfigError, UnknownNameError
    from core.data.datasets import DatasetError
    from core.data.symmetry import SymmetryError
    from core.data.video import CorruptVideo
    from core.io import LockTimeout, RunFolderLocked
    from harness.train import CheckpointError, ForeignCheckpoint, NonFiniteLoss, NothingTrained

    try:
        return args.func(args)
    except (UserError, ConfigError, DatasetError, SymmetryError, CorruptVideo, RunFolderLocked, LockTimeout,
            ForeignCheckpoint, CheckpointError, UnknownNameError) as err:
        print(f"vsbench: error: {err}", file=sys.stderr)
        return 2
    except (NonFiniteLoss, NothingTrained) as err:
        print(f"vsbench: training stopped: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
