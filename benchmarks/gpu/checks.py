"""The environment line and the bf16 correctness checks of the GPU run (stages 1 and 2).

- :func:`environment`: device, driver, torch/CUDA/cuDNN versions, CPU cores, and the measured
  dense matmul rates (bf16, fp32 without TF32, TF32) -- the bf16 rate is the denominator of every
  "fraction of peak" in the throughput table.
- :func:`conv3d_check`: every Conv3d of R3D-18 on its own input, forward and backward, in bf16
  autocast against true fp32 (TF32 off). "Within bf16 expectations" is measured, not assumed: the
  same convolution in fp32 on inputs rounded to bf16 gives the error bf16 rounding alone
  causes; the bf16 kernel must stay within twice that plus one bf16 ulp (2^-8).
- :func:`method_step_check`: one training step of every method on the same batch and weights in
  fp32 and under bf16 autocast: the loss must be finite and agree within ``loss_rtol``; the
  gradients must be finite (their cosine to the fp32 gradients is reported).
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import subprocess
import time

import torch
import torch.nn as nn

from backbones import create_backbone
from harness.train import DeviceAugment
from methods.base import TrainState, create_method, list_methods

BF16_ULP = 2.0**-8


@contextlib.contextmanager
def true_fp32():
    """fp32 matmuls and convolutions without TF32 (PyTorch lets cuDNN use TF32 by default)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, reps: int, *, tf32: bool = False) -> float:
    """Dense ``n x n x n`` matmul rate in FLOP/s (2 n^3 per product; mean of ``reps`` products after 3 warm-ups)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        for _ in range(3):
            a @ b
        synchronize(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        synchronize(device)
        return reps * 2 * n**3 / (time.perf_counter() - t)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True)
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown (nvidia-smi not available)"


def environment(device: torch.device, *, matmul_n: int, reps: int) -> dict:
    """What the figures were measured on, and the measured matmul rates (TFLOP/s)."""
    cuda = device.type == "cuda"
    env = {
        "device": torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "driver": _driver() if cuda else "-",
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "-",
        "cudnn": str(torch.backends.cudnn.version()) if cuda else "-",
        "python": platform.python_version(),
        "cpu_cores": len(os.sched_getaffinity(0)),
        "gpu_memory_gb": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1) if cuda else None,
        "matmul_n": matmul_n,
    }
    env["bf16_tflops"] = matmul_rate(device, torch.bfloat16, matmul_n, reps) / 1e12
    with true_fp32():
        env["fp32_tflops"] = matmul_rate(device, torch.float32, matmul_n, reps) / 1e12
    env["tf32_tflops"] = matmul_rate(device, torch.float32, matmul_n, reps, tf32=True) / 1e12 if cuda else None
    return env


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref).norm() / ref.norm().clamp_min(1e-30))


def _conv_errors(conv: nn.Conv3d, x: torch.Tensor, g: torch.Generator) -> dict[str, float]:
    """Relative errors of one convolution's output, input gradient and weight gradient against
    true fp32: of the bf16 autocast kernel (``*_bf16``), and of fp32 arithmetic on every operand
    and result rounded to bf16 (``*_rounding``: what bf16 storage alone costs)."""
    upstream = torch.randn(conv(x).shape, generator=g, device="cpu").to(x.device)

    def run(autocast: bool, rounded: bool) -> tuple[torch.Tensor, ...]:
        cast = (lambda t: t.bfloat16().float()) if rounded else (lambda t: t)
        xi = cast(x.detach()).requires_grad_(True)
        wi = cast(conv.weight.detach()).requires_grad_(True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            y = torch.nn.functional.conv3d(xi, wi, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        gx, gw = torch.autograd.grad(y, (xi, wi), cast(upstream).to(y.dtype))
        return tuple(cast(t.detach().float()) for t in (y, gx, gw))

    with true_fp32():
        ref, rounded = run(False, False), run(False, True)
    bf16 = run(True, False)
    out = {}
    for name, r, b, ref_i in zip(("out", "grad_input", "grad_weight"), rounded, bf16, ref):
        out[f"{name}_bf16"], out[f"{name}_rounding"] = _rel(b, ref_i), _rel(r, ref_i)
    return out


def conv3d_check(device: torch.device, *, batch: int, frames: int, crop: int, backbone: str = "r3d_18") -> dict:
    """Every Conv3d of ``backbone`` on the input it sees in an fp32 forward of a random clip batch."""
    torch.manual_seed(0)
    model = create_backbone(backbone).to(device).train()
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: inputs.__setitem__(name, args[0].detach()))
             for name, m in model.named_modules() if isinstance(m, nn.Conv3d)]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, frames, crop, crop, generator=g).to(device)
    with true_fp32(), torch.no_grad():
        feats_fp32 = model(x).float()
    for h in hooks:
        h.remove()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        feats_bf16 = model(x).float()
    modules = dict(model.named_modules())
    layers = []
    for name, xi in inputs.items():
        e = _conv_errors(modules[name], xi, g)
        limits = {k: 2 * e[f"{k}_rounding"] + BF16_ULP for k in ("out", "grad_input", "grad_weight")}
        e["ok"] = all(e[f"{k}_bf16"] <= limits[k] for k in limits)
        layers.append({"layer": name, **e})
    worst = {k: max(layer[k] for layer in layers) for k in layers[0] if k not in ("layer", "ok")}
    return {"backbone": backbone, "input": [batch, 3, frames, crop, crop], "layers": layers, "worst": worst,
            "features_rel_error": _rel(feats_bf16, feats_fp32), "ok": all(layer["ok"] for layer in layers)}


def random_batch(spec, batch: int, g: torch.Generator, decode: tuple[int, int]) -> dict:
    """One loader-shaped uint8 batch for a method's DataSpec (random content)."""
    out = {"index": torch.arange(batch), "label": torch.zeros(batch, dtype=torch.long)}
    channels = {"rgb": 3, "flow": 2}
    for m in spec.modalities:
        out[m] = torch.randint(0, 256, (batch, spec.clips, spec.frames, *decode, channels[m]), dtype=torch.uint8, generator=g)
    return out


def _one_step(method: nn.Module, batch: dict, autocast: bool, device: torch.device) -> tuple[float, torch.Tensor]:
    """Loss and flat gradient of one forward/backward of ``method`` on an augmented batch."""
    torch.manual_seed(0)
    method.train()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = method(batch, TrainState(epochs=1, steps_per_epoch=100)).loss.float()
    loss.backward()
    grads = [p.grad.float().flatten() for p in method.parameters() if p.grad is not None]
    return float(loss.detach()), torch.cat(grads)


def method_step_check(method_name: str, device: torch.device, *, batch: int, frames: int, crop: int,
                      backbone: str, loss_rtol: float, method_args: dict | None = None) -> dict:
    """One step of ``method_name`` in fp32 and in bf16 autocast from the same weights and batch."""
    torch.manual_seed(0)
    model = create_backbone(backbone)
    method = create_method(method_name, model, dataset_size=4 * batch, overrides={"frames": frames, "crop": crop, **(method_args or {})})
    spec = method.data_spec()
    method = method.to(device)
    decode = tuple(spec.decode_size or (128, 171))
    raw = random_batch(spec, batch, torch.Generator().manual_seed(1), decode)
    augmented = DeviceAugment(spec, device, seed=0, channels_last=False)(raw)
    with true_fp32():
        loss32, grad32 = _one_step(copy.deepcopy(method), augmented, False, device)
    loss16, grad16 = _one_step(copy.deepcopy(method), augmented, True, device)
    finite = bool(torch.isfinite(torch.tensor(loss16)) and torch.isfinite(grad16).all())
    rel = abs(loss16 - loss32) / max(abs(loss32), 1e-12)
    cos = float(torch.nn.functional.cosine_similarity(grad16, grad32, dim=0)) if grad32.numel() else float("nan")
    return {"method": method_name, "loss_fp32": loss32, "loss_bf16": loss16, "loss_rel_diff": rel, "grad_cosine": cos,
            "finite": finite, "ok": finite and rel <= loss_rtol}


def method_step_checks(device: torch.device, *, batch: int, frames: int, crop: int, backbone: str, loss_rtol: float,
                       method_args: dict[str, dict]) -> list[dict]:
    """:func:`method_step_check` for every registered self-supervised method and the supervised reference."""
    results = []
    for name in list_methods(include_reference=True):
        try:
            results.append(method_step_check(name, device, batch=batch, frames=frames, crop=crop, backbone=backbone,
                                             loss_rtol=loss_rtol, method_args=method_args.get(name)))
        except Exception as err:  # one method's failure must not hide the others' figures
            results.append({"method": name, "error": f"{type(err).__name__}: {err}", "ok": False})
    return results

