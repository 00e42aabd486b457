"""The GPU run's tables, written from its figures (``gpu.json``): ``environment.md``,
``throughput.md`` and ``suite.md``. Each names the device, the commit and the command; a stage that
failed or was skipped says so in its place instead of leaving a gap.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from core.io import write_text_atomic

GOAL_RATIO, GOAL_PEAK, GOAL_WAIT = 2.0, 0.40, 0.10


def _stage(figures: dict, name: str) -> tuple[object, str | None]:
    """(result, why there is none) of one stage."""
    stage = figures.get("stages", {}).get(name)
    if stage is None:
        return None, "not run"
    if "result" in stage:
        return stage["result"], None
    return None, stage.get("error") or f"skipped: {stage.get('skipped')}"


def header(figures: dict, title: str) -> list[str]:
    env, _ = _stage(figures, "environment")
    env = env or {}
    device = f"{env.get('device', '?')}" + (f", {env['gpu_memory_gb']} GiB, driver {env['driver']}" if env.get("gpu_memory_gb") else "")
    return [f"# {title}", "",
            f"- Device: {device}; {env.get('cpu_cores', '?')} CPU cores; torch {env.get('torch', '?')}, CUDA {env.get('cuda', '?')}, "
            f"cuDNN {env.get('cudnn', '?')}, Python {env.get('python', '?')}",
            f"- Commit: `{figures.get('commit', 'unknown')}`; command: `{figures.get('command', '?')}` (started {figures.get('started', '?')}, "
            f"{figures.get('wall_s', 0):.0f} s in all)", ""]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _section(figures: dict, stage: str, title: str | None, render) -> list[str]:
    """A stage's lines as ``render(result)`` makes them, or why it has none."""
    result, why = _stage(figures, stage)
    return ([f"## {title}", ""] if title else []) + (render(result) if result else [f"Not measured: {why}", ""])


def _matmul(env: dict) -> list[str]:
    tf32 = f", TF32 {env['tf32_tflops']:.4g}" if env.get("tf32_tflops") else ""
    return [f"Measured dense matmul rate ({env['matmul_n']}^3): bf16 {env['bf16_tflops']:.4g} TFLOP/s, "
            f"fp32 without TF32 {env['fp32_tflops']:.4g}{tf32}.", ""]


def _conv(conv: dict) -> list[str]:
    w = conv["worst"]
    return [f"Every Conv3d of {conv['backbone']} on its own input (batch x C x T x H x W = {' x '.join(map(str, conv['input']))}), "
            "autocast bf16 against true fp32 (TF32 off). Worst relative error over the layers, and what rounding every operand "
            "and result to bf16 alone gives (the limit per layer is twice that plus 2^-8):", "",
            "| | output | input gradient | weight gradient |", "|---|---|---|---|",
            f"| bf16 kernel | {w['out_bf16']:.2e} | {w['grad_input_bf16']:.2e} | {w['grad_weight_bf16']:.2e} |",
            f"| bf16 rounding alone | {w['out_rounding']:.2e} | {w['grad_input_rounding']:.2e} | {w['grad_weight_rounding']:.2e} |", "",
            f"All {len(conv['layers'])} layers within the limit: **{'yes' if conv['ok'] else 'no'}**. Whole-network features: "
            f"relative error {conv['features_rel_error']:.2e}.", ""]


def _method_steps(steps: list[dict]) -> list[str]:
    lines = ["Same weights and batch; the loss must be finite and within 5% of fp32's.", "",
             "| method | loss fp32 | loss bf16 | relative difference | gradient cosine | finite | ok |", "|---|---|---|---|---|---|---|"]
    for r in steps:
        if "error" in r:
            lines.append(f"| {r['method']} | error: {r['error']} | | | | | no |")
        else:
            lines.append(f"| {r['method']} | {r['loss_fp32']:.4f} | {r['loss_bf16']:.4f} | {r['loss_rel_diff']:.2e} | "
                         f"{r['grad_cosine']:.4f} | {'yes' if r['finite'] else 'no'} | {'yes' if r['ok'] else 'no'} |")
    return lines + [""]


def _retrieval(ret: dict) -> list[str]:
    return [f"{ret['queries']} queries against {ret['gallery']} gallery features of {ret['dim']} values, top-{ret['k']} "
            f"(float64 chunked, tie rule) and R@1..50: {ret['seconds']:.3f} s (best of {len(ret['seconds_all'])}).", ""]


def environment_md(figures: dict) -> str:
    return "\n".join(header(figures, "GPU run: environment and bf16 checks")
                     + _section(figures, "environment", None, _matmul)
                     + _section(figures, "conv3d_bf16", "Conv3d in bf16 against fp32", _conv)
                     + _section(figures, "method_steps_bf16", "One training step per method, bf16 autocast against fp32", _method_steps)
                     + _section(figures, "retrieval", "Retrieval at UCF101 size", _retrieval))


def throughput_rows(figures: dict) -> dict[tuple[str, str], dict]:
    """The step and end-to-end figures of every (method, path), merged."""
    rows: dict[tuple[str, str], dict] = {}
    for name in ("step_throughput", "step_throughput_flow", "e2e_throughput"):
        result, _ = _stage(figures, name)
        for r in (result or {}).get("rows", []):
            merged = rows.setdefault((r["method"], r["path"]), {})
            problem = r.get("error") or r.get("skipped")
            if problem:
                merged.setdefault("problems", []).append(f"{name.replace('_', ' ')}: {problem}")
            merged.update({k: v for k, v in r.items() if k not in ("error", "skipped")})
    return rows


def throughput_md(figures: dict) -> str:
    lines = header(figures, "GPU run: train-step throughput per method")
    rows = throughput_rows(figures)
    if not rows:
        why = [f"{n}: {_stage(figures, n)[1]}" for n in ("step_throughput", "e2e_throughput")]
        return "\n".join(lines + [f"Not measured ({'; '.join(why)}).", ""])
    sizes = figures.get("sizes", {})
    steps, _ = _stage(figures, "step_throughput")
    clip_gflop = (steps or {}).get("clip_gflop", 0.0)
    lines += [f"{sizes.get('backbone')} at {sizes.get('frames')}x{sizes.get('crop')}x{sizes.get('crop')}, batch {sizes.get('batch')}, "
              f"decoder {figures.get('backend', '?')}. **seed**: fp32 (PyTorch defaults), contiguous tensors, no cudnn.benchmark, "
              "augmentation on the CPU frame by frame in the loader workers. **vsbench**: bf16 autocast, channels_last_3d, "
              "cudnn.benchmark, batched augmentation on the GPU. End to end: "
              f"{sizes.get('steps')} steps timed after {sizes.get('warmup')} warm-up steps through the loader, its workers on every "
              "CPU core; clips/s counts every view of a video. Step alone: the same optimizer step on a batch held on the host, "
              f"{sizes.get('step_only')} steps after one warm-up. Peak fraction: FLOP rate / measured bf16 matmul rate, FLOPs by the "
              f"3x rule (forward and backward: 3 x {clip_gflop:.1f} GFLOP forward per clip per view) or as counted (FlopCounterMode: the passes the "
              "method really runs, key encoders forward only).", "",
              "| method | seed clips/s | vsbench clips/s | b/a | vsbench peak fraction | step alone: seed / vsbench clips/s "
              "| step alone: vsbench peak fraction (rule / counted) | data wait seed / vsbench | peak memory seed / vsbench (GB) |",
              "|---|---|---|---|---|---|---|---|---|"]
    methods = sorted({m for m, _ in rows})
    met = {"ratio": 0, "peak": 0, "wait": 0}
    for m in methods:
        a, b = rows.get((m, "seed"), {}), rows.get((m, "vsbench"), {})
        ratio = b["clips_per_s"] / a["clips_per_s"] if "clips_per_s" in a and "clips_per_s" in b else None
        met["ratio"] += ratio is not None and ratio >= GOAL_RATIO
        met["peak"] += b.get("e2e_peak_fraction_3x", 0) >= GOAL_PEAK
        met["wait"] += "data_wait" in b and b["data_wait"] < GOAL_WAIT
        cells = [m, _num(a, "clips_per_s", "{:.0f}"), _num(b, "clips_per_s", "{:.0f}"), f"{ratio:.2f}" if ratio else "-",
                 _num(b, "e2e_peak_fraction_3x", pct=True),
                 f"{_num(a, 'step_clips_per_s', '{:.0f}')} / {_num(b, 'step_clips_per_s', '{:.0f}')}",
                 f"{_num(b, 'peak_fraction_3x', pct=True)} / {_num(b, 'peak_fraction_counted', pct=True)}",
                 f"{_num(a, 'data_wait', pct=True)} / {_num(b, 'data_wait', pct=True)}",
                 f"{_num(a, 'peak_memory_gb', '{:.1f}')} / {_num(b, 'peak_memory_gb', '{:.1f}')}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Goals: b/a >= {GOAL_RATIO:g} for {met['ratio']} of {len(methods)} methods; >= {_pct(GOAL_PEAK)} of the bf16 rate "
              f"end to end for {met['peak']}; data wait < {_pct(GOAL_WAIT)} for {met['wait']}.", ""]
    problems = [f"- {m} / {p}: {text}" for (m, p), r in sorted(rows.items()) for text in r.get("problems", [])]
    if problems:
        lines += ["Not measured:", *problems, ""]
    ab = (steps or {}).get("channels_last_ab")
    if ab:
        lines += [f"channels_last_3d A/B ({ab['method']}, vsbench path, step alone): {ab['step_s_channels_last'] * 1e3:.0f} ms with, "
                  f"{ab['step_s_contiguous'] * 1e3:.0f} ms without.", ""]
    profiled, _ = _stage(figures, "profile")
    if profiled:
        lines += [f"Profile of the method whose step alone is slowest on the vsbench path ({profiled['method']}): profile.txt.", ""]
    return "\n".join(lines)


def _num(row: dict, key: str, fmt: str = "{}", pct: bool = False) -> str:
    if key not in row:
        return "-"
    return _pct(row[key]) if pct else fmt.format(row[key])


def suite_md(figures: dict, table: Path) -> str:
    lines = header(figures, "GPU run: reduced MotionShapes suite")
    result, why = _stage(figures, "suite")
    if result is None or "plan" not in result:
        return "\n".join(lines + [f"Not run: {why or result.get('skipped')}", ""])
    plan = result["plan"]
    epochs = f"{plan['epochs']} epoch{'s' if plan['epochs'] != 1 else ''}"
    lines += [f"`benchmarks/suites/motionshapes.toml` with seed 0, no ablation rows, {epochs} per run, "
              f"{plan['eval_clips']} clips per video for retrieval, linear probe and kNN; the supervised row fine-tunes "
              f"{epochs} from scratch. Data: MotionShapes ({result['videos']['train']} train / "
              f"{result['videos']['test']} test videos). Budget predicted at {plan['seconds']:.0f} s from the throughput stage; "
              f"the suite {result['status']} after {figures['stages']['suite'].get('seconds', 0):.0f} s.", "", f"Suite command: `{shlex.join(['vsbench', *result['command'][3:]])}`", ""]
    lines += [table.read_text() if table.exists() else "No table was written (see suite.log).", ""]
    return "\n".join(lines)


def write_all(out: Path, figures: dict, *, suite_table: Path) -> None:
    write_text_atomic(out / "environment.md", environment_md(figures))
    write_text_atomic(out / "throughput.md", throughput_md(figures))
    write_text_atomic(out / "suite.md", suite_md(figures, suite_table))
