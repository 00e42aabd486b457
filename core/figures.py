"""Figures shared by the evaluation (retrieval examples) and the reports (recall curves).

Drawn on matplotlib's Agg canvas without pyplot, so no global backend is switched, and written
atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from core.io import write_bytes_atomic


def new_figure(**kwargs):
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | os.PathLike, dpi: int) -> Path:
    """Write ``fig`` as a PNG at ``path``, atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    path = Path(path)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def _check_frames(array: np.ndarray, ndim: int, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"{what} must be uint8 frames, got {array.dtype}")
    if array.ndim != ndim or array.shape[-1] != 3 or 0 in array.shape:
        dims = "(N, frames, H, W, 3)" if ndim == 5 else "(N, K, frames, H, W, 3)"
        raise ValueError(f"{what} must have shape {dims}, got {array.shape}")
    return array


def _strip(frames: np.ndarray, max_frames: int, gap: int = 2) -> np.ndarray:
    """Up to ``max_frames`` evenly spaced frames side by side, separated by white columns."""
    picked = np.linspace(0, len(frames) - 1, min(len(frames), max_frames)).round().astype(int)
    h = frames.shape[1]
    white = np.full((h, gap, 3), 255, np.uint8)
    parts = []
    for i in picked:
        parts += [frames[i], white]
    return np.concatenate(parts[:-1], axis=1)


def _class_name(class_names: Sequence[str] | Mapping[int, str], label: int) -> str:
    try:
        return str(class_names[label])
    except (IndexError, KeyError, TypeError):
        return str(label)


def _frame_axes(ax, color: str, width: float) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(width)


def plot_retrieval_examples(
    query_frames: np.ndarray,
    neighbour_frames: np.ndarray,
    query_labels: Sequence[int] | np.ndarray,
    neighbour_labels: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str] | Mapping[int, str],
    path: str | os.PathLike,
    *,
    max_frames: int = 4,
    dpi: int = 100,
) -> Path:
    """Draw retrieval examples: per line, a query clip's frame strip, then its neighbours' strips.

    ``query_frames`` uint8 (N, frames, H, W, 3); ``neighbour_frames`` uint8 (N, K, frames, H,
    W, 3), nearest first; ``query_labels`` (N,) and ``neighbour_labels`` (N, K) class indices
    into ``class_names``. Each strip shows up to ``max_frames`` evenly spaced frames. A
    neighbour is framed (and titled) green when its class matches the query's, red otherwise;
    the query is framed black. The caller picks and loads the clips; this only draws. PNG.
    """
    queries = _check_frames(query_frames, 5, "query_frames")
    neighbours = _check_frames(neighbour_frames, 6, "neighbour_frames")
    q_labels = np.asarray(query_labels).reshape(-1)
    n_labels = np.asarray(neighbour_labels)
    n, k = neighbours.shape[:2]
    if len(queries) != n or q_labels.shape != (n,) or n_labels.shape != (n, k):
        raise ValueError(f"need N queries with N labels and (N, K) neighbours and labels; got {len(queries)} queries, "
                         f"labels {q_labels.shape}, neighbours {neighbours.shape[:2]}, neighbour labels {n_labels.shape}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    sample = _strip(queries[0], max_frames)
    strip_h = 1.1  # inches
    strip_w = strip_h * sample.shape[1] / sample.shape[0]
    fig = new_figure(figsize=((k + 1) * (strip_w + 0.15), n * (strip_h + 0.35)), layout="constrained")
    axes = fig.subplots(n, k + 1, squeeze=False)
    for i in range(n):
        query_class = int(q_labels[i])
        ax = axes[i, 0]
        ax.imshow(_strip(queries[i], max_frames), interpolation="nearest")
        ax.set_title(f"query: {_class_name(class_names, query_class)}", fontsize=8, fontweight="bold")
        _frame_axes(ax, "black", 2.0)
        for j in range(k):
            label = int(n_labels[i, j])
            color = "#1a9850" if label == query_class else "#d73027"
            ax = axes[i, j + 1]
            ax.imshow(_strip(neighbours[i, j], max_frames), interpolation="nearest")
            ax.set_title(f"#{j + 1} {_class_name(class_names, label)}", fontsize=8, color=color)
            _frame_axes(ax, color, 4.0)
    return save_png(fig, path, dpi=dpi)
