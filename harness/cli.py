"""The ``vsbench`` command line.

    vsbench data synth    generate the MotionShapes data set (UCF101 layout)
    vsbench data check    scan a data set: counts per class and split, corrupt and short videos
    vsbench data flow     compute the optical-flow cache of a data set once

Every subcommand explains itself with ``--help``. User errors (a bad split file, an unknown
option value) print one line naming the file, line or option at fault and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from harness import __version__


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
    p.add_argument("--preset", default="tiny", help="size preset: tiny (tests), small (CPU benchmark), standard (GPU suites); default tiny")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--seed", type=int, help="generation seed (default: the preset's)")
    p.add_argument("--scene-bias", type=float, help="0..1: tie background family to class in the train split with this probability")
    for name in ("classes", "groups", "clips-per-group", "frames", "height", "width"):
        p.add_argument(f"--{name}", type=int, help=f"override the preset's {name.replace('-', '_')}")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args) -> int:
    from harness.data.synthetic import PRESETS, generate_motionshapes

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


def _add_dataset_args(p) -> None:
    p.add_argument("data", help="data set: a UCF101/HMDB51 root (videos + official split files) or a CSV list")
    p.add_argument("--format", default="auto", choices=("auto", "ucf101", "hmdb51", "csv"), help="data set format (default: detect)")


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
    from harness.data.check import check_dataset

    if args.split not in ("1", "2", "3", "all"):
        raise UserError(f"--split: expected 1, 2, 3 or all, got {args.split!r}")
    splits = [1, 2, 3] if args.split == "all" else [int(args.split)]
    report = check_dataset(args.data, format=args.format, splits=splits, min_frames=args.min_frames)
    print(report.render())
    return 1 if report.problems else 0


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
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    p.set_defaults(func=_cmd_flow)


def _cmd_flow(args) -> int:
    from harness.data.datasets import open_dataset
    from harness.data.modalities import compute_flow_cache

    videos = open_dataset(args.data, format=args.format, subset="all")
    out = args.out or Path(args.data) / "flow"
    pairs = [(r.path, Path(r.path).stem) for r in videos.records]
    summary = compute_flow_cache(pairs, out, algorithm=args.algorithm, bound=args.bound, short_side=args.short_side, workers=args.workers)
    failed = summary["failed"]
    print(f"flow cache at {out}: {len(summary['computed'])} videos computed, {len(summary['skipped_existing'])} already present, {len(failed)} failed")
    for key, reason in failed.items():
        print(f"  failed: {key}: {reason}")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vsbench",
        description="vsbench: pretrain and evaluate self-supervised video representation methods under one harness.",
    )
    parser.add_argument("--version", action="version", version=f"vsbench {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    data = commands.add_parser("data", help="data sets: generate, check, precompute flow", description="Data set tools.")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    _add_data_synth(data_sub)
    _add_data_check(data_sub)
    _add_data_flow(data_sub)
    data.set_defaults(func=lambda args: _usage(data))
    parser.set_defaults(func=lambda args: _usage(parser))
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vsbench`` console script."""
    from harness.data.datasets import DatasetError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, DatasetError, ValueError) as err:
        print(f"vsbench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
