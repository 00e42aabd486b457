"""Result tables, plots and reports built from a suite's MLflow runs.

What the table shows
    One line per table row (a method such as ``moco``, an ablation such as ``iic-cmc``, or a
    reference row: ``random init``, ``supervised``), with a ``backbone`` level when the runs
    use more than one backbone. Rows come in the order their first run was started, with
    ``random init`` and ``supervised`` last. A row a suite trained in its paper's setup
    (``backbones = ["paper"]``, tag ``setup = paper``) is labelled ``<row> (paper setup)``, and the
    caption lists, per such row, the paper settings the suite changed (tag ``setup.changed``);
    the other rows are controlled comparisons. The columns, in order:

    - ``R@1, R@5, R@10, R@20, R@50``: ``eval/retrieval/R<k>`` (last value of the run), percent;
    - ``linear top-1``, ``fine-tune top-1`` (video level), ``kNN top-1``: ``eval/linear/top1``,
      ``eval/finetune/video_top1``, ``eval/knn/top1``, percent;
    - ``motion: shuffled / reversed / static``: ``eval/probe/sim_*``, cosine similarity, 3 decimals;
    - ``static-bias gap``: ``eval/probe/bias_gap``, percentage points (only when some run logged it);
    - ``pretrain time (min)``, ``clips/s``, ``peak mem (GB)`` (MB / 1024), ``params (M)``: the
      ``pretrain/*`` costs of the run;
    - ``seeds``: how many distinct seeds the row has.

Mean ± std over seeds, or one seed's bootstrap interval
    A cell is the mean over the row's seeds, followed by ``± std`` (sample std, ddof=1) when
    two or more seeds contributed. With one seed it is the value followed by its 95% bootstrap
    interval over test videos, ``value [low, high]`` (same unit and decimals as the value), when
    the run logged ``<metric>_ci_low`` and ``<metric>_ci_high`` (:mod:`core.uncertainty`:
    retrieval R@k, linear, kNN and fine-tune top-1); otherwise the value alone. A run that logged
    only one of the two bounds is an error. ``params (M)`` is a property of the architecture: it
    is shown without ``± 0.00`` when every seed agrees.

Which rows the table tells apart (marks)
    A retrieval, linear, fine-tune or kNN cell (not the probes, not the costs) gets the suffix
    ``≈R`` when it is NOT distinguishable from the ``random init`` row's cell of the same
    backbone and column, and ``≈M`` when it is not distinguishable from the ``moco`` row's (the
    RGB MoCo baseline): ``45.0 ± 7.1 ≈M``. Two cells differ when
    ``|mean_a - mean_b| > 1.96 * sqrt(se_a^2 + se_b^2)``, where ``se = std / sqrt(n)`` for a cell
    of n >= 2 seeds and ``se = (high - low) / (2 * 1.96)`` for a single-seed cell with an
    interval (:func:`standard_error`, :func:`distinguishable`). A cell without uncertainty (one
    seed, no interval) is not compared, nor is any cell with such a reference cell: it gets no
    mark. A row is never compared with itself, so a reference row carries no mark of its own.
    The caption states the rule whenever a reference row is in the table
    (:func:`comparison_marks`).

Comparability rule (protocol hashes)
    Every evaluation protocol has a short hash (:mod:`evaluation.protocols`), stored on each run
    as the tag ``protocol.<name>``. Numbers share a column only when their hashes are equal:
    runs with different hashes are never averaged into one cell, and a column whose runs carry
    more than one hash is split into one column per hash, suffixed with the short hash
    (``R@1 [a1b2c3]``: its first 6 characters, more if two hashes share them; ``[no hash]``
    for runs without the tag); the markdown caption says so and lists the full hashes.
    Pretraining costs have no protocol.

Which runs count
    FINISHED runs with a ``row`` tag, other than suite (parent) runs. When the same (row,
    backbone, seed) was run more than once -- a suite run again with ``--force``, or a report over
    every invocation of a suite -- the latest run with a value under a given protocol hash is
    used, so a seed is never counted twice.

Missing numbers stay empty
    A metric a run did not log (reference rows have no pretraining cost; fine-tuning may be
    switched off) gives an empty cell, never a made-up number; NaN values and MLflow's clamped
    infinities count as missing.

Outputs
    :func:`results_table` (formatted strings; the numbers ride along in ``table.attrs``),
    :func:`results_numbers` (long-form numbers, with ``std`` and the single seed's ``ci_low``,
    ``ci_high``), :func:`write_table` (markdown + CSV, written atomically),
    :func:`plot_recall_curves` (bands: ± std, or one seed's interval),
    :func:`format_table_text` and :func:`report_experiment`, which does all of it for one
    experiment.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.figures import new_figure, save_png
from core.io import write_text_atomic

__all__ = [
    "COLUMNS",
    "NUMBER_COLUMNS",
    "RECALL_KS",
    "REFERENCE_ROWS",
    "MARKS",
    "Column",
    "comparison_marks",
    "distinguishable",
    "format_table_text",
    "numbers_of",
    "plot_recall_curves",
    "report_experiment",
    "results_numbers",
    "results_table",
    "standard_error",
    "table_markdown",
    "write_table",
]


@dataclass(frozen=True)
class Column:
    """One table column: which metric it shows, under which protocol, and how it is printed."""

    name: str  # display name
    metric: str  # MLflow metric key
    protocol: str | None  # the protocol whose hash tag (``protocol.<name>``) decides comparability
    scale: float  # displayed value = logged value * scale
    decimals: int
    unit: str
    optional: bool = False  # left out when no run logged the metric
    constant: bool = False  # the same for every seed: no "± 0" when all seeds agree
    compared: bool = False  # a test-set score: marked when not distinguishable from a reference row


RECALL_KS = (1, 5, 10, 20, 50)
RECALL_PREFIX = "eval/retrieval/R"

COLUMNS: tuple[Column, ...] = (
    *(Column(f"R@{k}", f"{RECALL_PREFIX}{k}", "retrieval", 100.0, 1, "%", compared=True) for k in RECALL_KS),
    Column("linear top-1", "eval/linear/top1", "linear", 100.0, 1, "%", compared=True),
    Column("fine-tune top-1", "eval/finetune/video_top1", "finetune", 100.0, 1, "%", compared=True),
    Column("kNN top-1", "eval/knn/top1", "knn", 100.0, 1, "%", compared=True),
    Column("motion: shuffled", "eval/probe/sim_shuffled", "probe", 1.0, 3, "cos"),
    Column("motion: reversed", "eval/probe/sim_reversed", "probe", 1.0, 3, "cos"),
    Column("motion: static", "eval/probe/sim_static", "probe", 1.0, 3, "cos"),
    Column("static-bias gap", "eval/probe/bias_gap", "probe", 100.0, 1, "pp", optional=True),
    Column("pretrain time (min)", "pretrain/wall_time_s", None, 1 / 60, 1, "min"),
    Column("clips/s", "pretrain/clips_per_s", None, 1.0, 1, "clips/s"),
    Column("peak mem (GB)", "pretrain/peak_memory_mb", None, 1 / 1024, 2, "GB"),
    Column("params (M)", "pretrain/params", None, 1e-6, 2, "M", constant=True),
)
_BY_METRIC = {c.metric: c for c in COLUMNS}

SEEDS_COLUMN = "seeds"
#: Reference rows, shown after every other row, in this order.
REFERENCE_ROWS = ("random init", "supervised")
#: Columns of :func:`results_numbers` (and of the CSV :func:`write_table` writes).
NUMBER_COLUMNS = ["row", "backbone", "column", "metric", "protocol", "protocol_hash", "unit", "mean", "std",
                  "ci_low", "ci_high", "n"]
#: Suffixes of the logged bootstrap interval of a metric (:mod:`core.uncertainty`).
CI_SUFFIXES = ("_ci_low", "_ci_high")
#: The rows every compared cell is tested against, with the mark of "not distinguishable from it".
MARKS = {"random init": "≈R", "moco": "≈M"}
Z95 = 1.96  # the standard normal's 97.5% quantile: two-sided 95%

NO_HASH = "no hash"  # the suffix of a split column whose runs carry no protocol tag
_SHORT_HASH = 6
_MLFLOW_INF = 1.7e308  # MLflow's SQL stores clamp +-inf to +-1.8e308


# --------------------------------------------------------------------------------------------
# From runs to numbers


def _tag(frame: pd.DataFrame, name: str) -> pd.Series:
    """The ``tags.<name>`` column as strings ("" where absent)."""
    column = f"tags.{name}"
    if column not in frame.columns:
        return pd.Series("", index=frame.index, dtype=object)
    return frame[column].map(lambda v: v if isinstance(v, str) else "" if v is None or pd.isna(v) else str(v))


def _counted_runs(frame: pd.DataFrame, parent_run_id: str | None) -> pd.DataFrame:
    """The runs that count, oldest first: FINISHED, with a ``row`` tag, not suite runs."""
    if frame is None or frame.empty or "status" not in frame.columns:
        return pd.DataFrame(columns=["run_id", "row", "backbone", "seed"])
    runs = frame
    if "start_time" in runs.columns:
        runs = runs.sort_values("start_time", kind="stable", na_position="last")
    if parent_run_id is not None:
        runs = runs[runs.get("parent_run_id", pd.Series(None, index=runs.index)) == parent_run_id]
    runs = runs[(runs["status"] == "FINISHED") & (_tag(runs, "row") != "") & (_tag(runs, "kind") != "suite")]
    runs = runs.reset_index(drop=True)
    paper = _tag(runs, "setup") == "paper"
    runs["row"] = [f"{row}{PAPER_SUFFIX}" if p else row for row, p in zip(_tag(runs, "row"), paper)]
    runs["changed"] = [changed if p else "" for changed, p in zip(_tag(runs, "setup.changed"), paper)]
    runs["backbone"] = _tag(runs, "backbone")
    seed = _tag(runs, "seed")
    ids = runs["run_id"].astype(str) if "run_id" in runs.columns else pd.Series(runs.index.astype(str), index=runs.index)
    runs["seed"] = [s if s else f"run:{i}" for s, i in zip(seed, ids)]  # no seed tag: each run is its own seed
    return runs


def _usable(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, NaN or (clamped) infinite."""
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) and abs(x) < _MLFLOW_INF else None


def _interval(run: pd.Series, col: Column) -> tuple[float, float]:
    """The run's logged bootstrap interval of ``col`` in the displayed unit; (NaN, NaN) when not logged.

    Half an interval (one bound logged, the other missing or not finite) is an error: it would
    silently turn a measured uncertainty into none."""
    bounds = [_usable(run.get(f"metrics.{col.metric}{suffix}")) for suffix in CI_SUFFIXES]
    if bounds[0] is None and bounds[1] is None:
        return math.nan, math.nan
    if bounds[0] is None or bounds[1] is None:
        missing = col.metric + CI_SUFFIXES[bounds[1] is None]
        raise ValueError(f"run {run.get('run_id', '?')} (row {run['row']!r}, seed {run['seed']}) logged half an "
                         f"interval of {col.metric}: {missing} is missing or not finite; log both "
                         f"{col.metric}_ci_low and {col.metric}_ci_high, or neither")
    return bounds[0] * col.scale, bounds[1] * col.scale


def _long_values(runs: pd.DataFrame) -> pd.DataFrame:
    """One record per (run, column) with a usable value: order, row, backbone, seed, column, hash,
    value and the run's interval of it (ci_low, ci_high; NaN when the run logged none)."""
    records = []
    hash_tags = {p: _tag(runs, f"protocol.{p}") for p in {c.protocol for c in COLUMNS if c.protocol}}
    for order, index in enumerate(runs.index):
        run = runs.loc[index]
        for col in COLUMNS:
            value = _usable(run.get(f"metrics.{col.metric}"))
            if value is None:
                continue
            ci_low, ci_high = _interval(run, col)
            records.append({
                "order": order, "row": run["row"], "backbone": run["backbone"], "seed": run["seed"],
                "column": col.name, "hash": hash_tags[col.protocol][index] if col.protocol else "",
                "value": value * col.scale, "ci_low": ci_low, "ci_high": ci_high,
            })
    long = pd.DataFrame(records, columns=["order", "row", "backbone", "seed", "column", "hash", "value", "ci_low", "ci_high"])
    # a (row, backbone, seed) run twice under one protocol: the latest run's value counts
    return long.drop_duplicates(["row", "backbone", "seed", "column", "hash"], keep="last")


def _first_seen(values: Iterable) -> list:
    return list(dict.fromkeys(values))


def low_shot_label(row: str, n: int) -> str:
    """The table row of ``row``'s encoder fine-tuned on ``n`` labelled training videos (a suite's ``low_shot``)."""
    return f"{row} (fine-tune on {n})"


_LOW_SHOT = re.compile(r" \(fine-tune on \d+\)$")


def _row_order(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(row, backbone) keys: rows by first run, reference rows last, each low-shot row right after
    the row it fine-tunes; backbones by first run."""
    rows = _first_seen(runs["row"])
    base = {r: _LOW_SHOT.sub("", r) for r in rows}
    bases = _first_seen(base[r] for r in rows)
    bases = [b for b in bases if b not in REFERENCE_ROWS] + [b for b in REFERENCE_ROWS if b in bases]
    rows = [r for b in bases for r in rows if base[r] == b]
    backbones = _first_seen(runs["backbone"])
    present = set(zip(runs["row"], runs["backbone"]))
    return [(r, b) for r in rows for b in backbones if (r, b) in present]


def _short_labels(hashes: Sequence[str]) -> dict[str, str]:
    """Suffix labels for hashes: the shortest prefix (>= 6 characters) that tells them apart."""
    real = [h for h in hashes if h]
    n = _SHORT_HASH
    while len({h[:n] for h in real}) < len(set(real)):
        n += 1
    return {h: (h[:n] if h else NO_HASH) for h in hashes}


PAPER_SUFFIX = " (paper setup)"  # the label of a suite row trained as its paper did (harness.suite, backbones = ["paper"])


@dataclass
class _Results:
    numbers: pd.DataFrame
    columns: list[tuple[Column, str, str]]  # (column, protocol hash, display name)
    keys: list[tuple[str, str]]  # (row, backbone) in table order
    seeds: dict[tuple[str, str], int]
    multi_backbone: bool
    protocol_hashes: dict[str, list[str]]
    labels: dict[str, dict[str, str]]  # protocol -> hash -> suffix label
    n_runs: int
    paper_changes: dict[str, str]  # paper-setup row -> the paper settings its suite changed


def _display_columns(long: pd.DataFrame, labels: dict[str, dict[str, str]]) -> list[tuple[Column, str, str]]:
    """The table's columns: one per Column, or one per protocol hash when the hashes differ."""
    out = []
    for col in COLUMNS:
        hashes = _first_seen(long.loc[long["column"] == col.name, "hash"])
        if not hashes:
            if not col.optional:
                out.append((col, "", col.name))
        elif len(hashes) == 1:
            out.append((col, hashes[0], col.name))
        else:
            out.extend((col, h, f"{col.name} [{labels[col.protocol or ''][h]}]") for h in hashes)
    return out


def _stats(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample std (ddof=1; NaN for a single value)."""
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) >= 2 else float("nan")
    return mean, std


def _compute(frame: pd.DataFrame, parent_run_id: str | None) -> _Results:
    runs = _counted_runs(frame, parent_run_id)
    long = _long_values(runs)
    protocol_hashes: dict[str, list[str]] = {}
    for col in COLUMNS:
        hashes = long.loc[long["column"] == col.name, "hash"]
        key = col.protocol or ""
        protocol_hashes[key] = _first_seen([*protocol_hashes.get(key, []), *hashes])
    labels = {p: _short_labels(h) for p, h in protocol_hashes.items()}
    columns = _display_columns(long, labels)
    keys = _row_order(runs) if len(runs) else []
    groups = {k: g for k, g in long.groupby(["row", "backbone", "column", "hash"], sort=False)}
    records = []
    for row, backbone in keys:
        for col, h, name in columns:
            group = groups.get((row, backbone, col.name, h))
            if group is None:
                continue
            mean, std = _stats(group["value"].to_numpy())
            # one seed: its bootstrap interval; several: the spread over seeds says it (std)
            ci_low, ci_high = (group["ci_low"].iloc[0], group["ci_high"].iloc[0]) if len(group) == 1 else (math.nan, math.nan)
            records.append({"row": row, "backbone": backbone, "column": name, "metric": col.metric,
                            "protocol": col.protocol or "", "protocol_hash": h, "unit": col.unit,
                            "mean": mean, "std": std, "ci_low": ci_low, "ci_high": ci_high, "n": len(group)})
    seeds = {k: g["seed"].nunique() for k, g in runs.groupby(["row", "backbone"], sort=False)} if len(runs) else {}
    return _Results(
        numbers=pd.DataFrame(records, columns=NUMBER_COLUMNS),
        columns=columns, keys=keys, seeds=seeds,
        multi_backbone=runs["backbone"].nunique() > 1 if len(runs) else False,
        protocol_hashes={p: h for p, h in protocol_hashes.items() if p and h}, labels=labels, n_runs=len(runs),
        paper_changes={row: changed for row, changed in zip(runs["row"], runs["changed"]) if changed} if len(runs) else {},
    )


def results_numbers(frame: pd.DataFrame, *, parent_run_id: str | None = None) -> pd.DataFrame:
    """The table's numbers in long form, in table order.

    Columns :data:`NUMBER_COLUMNS`: ``row, backbone, column`` (the display name, with the hash
    suffix when the column is split), ``metric, protocol, protocol_hash, unit``, then ``mean``,
    ``std``, ``ci_low`` and ``ci_high`` (in the displayed unit: percent, minutes, ...; std is NaN
    for one seed; the interval is the single seed's logged 95% bootstrap interval, NaN when it
    logged none or when the cell has several seeds) and ``n`` (seeds). Cells without a value have
    no record. ``frame`` is :func:`runs_frame`'s.
    """
    return _compute(frame, parent_run_id).numbers


# --------------------------------------------------------------------------------------------
# The formatted table


def _fmt(x: float, decimals: int) -> str:
    return f"{round(x, decimals) + 0.0:.{decimals}f}"  # + 0.0 turns -0.0 into 0.0


def _cell(mean: float, std: float, n: int, ci_low: float, ci_high: float, col: Column) -> str:
    """``mean ± std`` for several seeds, ``value [low, high]`` for one seed with an interval, else
    the value alone (and a constant column's mean alone when every seed agrees); column's decimals."""
    text = _fmt(mean, col.decimals)
    if n == 1 and math.isfinite(ci_low) and math.isfinite(ci_high):
        return f"{text} [{_fmt(ci_low, col.decimals)}, {_fmt(ci_high, col.decimals)}]"
    if n < 2 or (col.constant and std == 0):
        return text
    return f"{text} ± {_fmt(std, col.decimals)}"


# --------------------------------------------------------------------------------------------
# Which rows the table tells apart


def standard_error(std: float, n: int, ci_low: float, ci_high: float) -> float | None:
    """The standard error of a cell's mean: ``std / sqrt(n)`` over 2+ seeds; for one seed with a
    95% interval, its half-width / 1.96 (the normal approximation); None without uncertainty."""
    if n >= 2:
        return std / math.sqrt(n)
    if math.isfinite(ci_low) and math.isfinite(ci_high):
        return (ci_high - ci_low) / (2 * Z95)
    return None


def distinguishable(mean_a: float, se_a: float, mean_b: float, se_b: float) -> bool:
    """Whether two cells differ: ``|mean_a - mean_b| > 1.96 * sqrt(se_a^2 + se_b^2)`` (a two-sided
    95% test of a zero difference, treating the two estimates as independent and normal)."""
    return abs(mean_a - mean_b) > Z95 * math.sqrt(se_a**2 + se_b**2)


def comparison_marks(numbers: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    """``{(row, backbone, column): "≈R ≈M"}``: the marks of the compared cells that are NOT
    distinguishable from the :data:`MARKS` reference rows.

    ``numbers`` is :func:`results_numbers`'s frame. A cell is compared with the reference row's
    cell of the same backbone and column (so the same protocol hash), only in ``compared``
    columns, never with itself, and only when both cells have a :func:`standard_error`. A cell
    that differs from every reference row, or is not compared, is absent."""
    cells = {(r.row, r.backbone, r.column): (r.mean, standard_error(r.std, r.n, r.ci_low, r.ci_high))
             for r in numbers.itertuples() if _BY_METRIC[r.metric].compared}
    marks: dict[tuple[str, str, str], str] = {}
    for (row, backbone, column), (mean, se) in cells.items():
        found = []
        for reference, mark in MARKS.items():
            ref_mean, ref_se = cells.get((reference, backbone, column), (None, None))
            if row != reference and se is not None and ref_se is not None and not distinguishable(mean, se, ref_mean, ref_se):
                found.append(mark)
        if found:
            marks[row, backbone, column] = " ".join(found)
    return marks


def _marks_note(res: _Results) -> list[str]:
    """The caption line that states the marks and their rule, when a reference row is present."""
    present = [(row, mark) for row, mark in MARKS.items() if any(r == row for r, _ in res.keys)]
    if not present:
        return []
    legend = "; ".join(f"{mark} = not distinguishable from the {row!r} row" for row, mark in present)
    return [
        f"Marks: {legend} (R@k, linear, fine-tune and kNN cells, each against the reference row's cell of "
        f"the same backbone and column). Two cells differ when |mean_a - mean_b| > 1.96 * sqrt(se_a^2 + se_b^2), "
        f"with se = std / sqrt(n) over n >= 2 seeds and se = (high - low) / (2 * 1.96) for one seed with an "
        f"interval. A cell without uncertainty (one seed, no interval), or whose reference cell has none, is "
        f"not compared and carries no mark; a reference row is not compared with itself."
    ]


def _notes(res: _Results) -> list[str]:
    """Caption lines that describe the table itself: cells, marks, units, protocol hashes, splits."""
    names = {name for _, _, name in res.columns}
    notes = [
        "Cells: mean ± std over seeds (sample std, ddof=1) when a row has 2 or more seeds; with one seed, "
        "the value and its 95% bootstrap interval over test videos, value [low, high], when the run logged "
        "one, else the value alone; an empty cell was not measured. Only FINISHED runs count.",
        *_marks_note(res),
        "Units: R@k and top-1 in percent; motion: mean cosine similarity between a clip's feature and "
        "that of its shuffled / reversed / static version (lower = more motion-sensitive)"
        + ("; static-bias gap: accuracy on bias-aligned minus bias-conflicting videos, percentage points"
           if any(n.startswith("static-bias gap") for n in names) else "")
        + "; pretraining cost per run (GB = GiB).",
    ]
    if res.paper_changes:
        changes = "; ".join(f"{row}: {changed}" for row, changed in res.paper_changes.items())
        notes.append(f"Rows marked{PAPER_SUFFIX} train each method as its paper did (its backbone, initialisation, input size "
                     f"and recipe, docs/paper-configurations.md; the learning rate scaled linearly with the batch); the other "
                     f"rows are controlled: every method on the suite's backbone and settings. Paper settings the suite "
                     f"changed: {changes}.")
    if res.protocol_hashes:
        listed = ", ".join(f"{p} {'/'.join(h or NO_HASH for h in hs)}" for p, hs in res.protocol_hashes.items())
        notes.append(f"Protocol hashes: {listed}.")
    for protocol, hashes in res.protocol_hashes.items():
        split = _first_seen(col.name for col, _, name in res.columns if col.protocol == protocol and name != col.name)
        if split:
            legend = ", ".join(f"[{res.labels[protocol][h]}] = {h or 'runs without a protocol tag'}" for h in hashes)
            notes.append(
                f"The {protocol} protocol differs between runs: {', '.join(split)} are split into one column "
                f"per protocol hash ({legend}); numbers under different hashes are not comparable."
            )
    return notes


def results_table(frame: pd.DataFrame, *, parent_run_id: str | None = None) -> pd.DataFrame:
    """The results table of a suite: formatted strings, one line per row (and backbone).

    ``frame`` is :func:`core.tracking.runs_frame`'s; ``parent_run_id`` keeps only the
    children of that suite run. Index: ``row`` (or ``row, backbone`` when several backbones
    are present); columns as in the module docstring, split by protocol hash where the hashes
    differ, then ``seeds``. Empty strings mark missing numbers.

    ``table.attrs`` carries ``numbers`` (the :func:`results_numbers` records, for the CSV),
    ``notes`` (caption lines about cells, marks, units, protocol hashes and split columns),
    ``protocol_hashes`` ({protocol: [hash, ...]}) and ``runs`` (how many runs counted).
    """
    res = _compute(frame, parent_run_id)
    names = [name for _, _, name in res.columns]
    marks = comparison_marks(res.numbers)
    cells = {(r.row, r.backbone, r.column): _cell(r.mean, r.std, r.n, r.ci_low, r.ci_high, _BY_METRIC[r.metric])
             for r in res.numbers.itertuples()}
    cells = {key: f"{text} {marks[key]}" if key in marks else text for key, text in cells.items()}
    data = [[cells.get((row, bb, name), "") for name in names] + [str(res.seeds.get((row, bb), 0))]
            for row, bb in res.keys]
    if res.multi_backbone:
        index = pd.MultiIndex.from_tuples(res.keys, names=["row", "backbone"]) if res.keys else \
            pd.MultiIndex.from_arrays([[], []], names=["row", "backbone"])
    else:
        index = pd.Index([row for row, _ in res.keys], name="row", dtype=object)
    table = pd.DataFrame(data, index=index, columns=[*names, SEEDS_COLUMN], dtype=object)
    table.attrs.update({
        "numbers": res.numbers.to_dict("records"),
        "notes": _notes(res),
        "protocol_hashes": res.protocol_hashes,
        "runs": res.n_runs,
    })
    return table


def numbers_of(table: pd.DataFrame) -> pd.DataFrame:
    """The long-form numbers a :func:`results_table` carries (empty if it carries none)."""
    return pd.DataFrame(table.attrs.get("numbers", []), columns=NUMBER_COLUMNS)


# --------------------------------------------------------------------------------------------
# Text renderings


def _grid(table: pd.DataFrame) -> tuple[list[str], list[list[str]], int]:
    """Header, body rows (as strings) and the number of leading index columns."""
    names = [n or "row" for n in table.index.names]
    rows = []
    for key, values in zip(table.index, table.itertuples(index=False)):
        keys = list(key) if isinstance(key, tuple) else [key]
        rows.append([str(k) for k in keys] + ["" if v is None else str(v) for v in values])
    return names + [str(c) for c in table.columns], rows, len(names)


def _widths(header: list[str], rows: list[list[str]], minimum: int = 1) -> list[int]:
    return [max([minimum, len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]


def _pad(text: str, width: int, left: bool) -> str:
    return text.ljust(width) if left else text.rjust(width)


def table_markdown(table: pd.DataFrame) -> str:
    """``table`` as a GitHub pipe table (index columns left-aligned, numbers right-aligned)."""
    header, rows, n_index = _grid(table)
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    header, rows = [esc(h) for h in header], [[esc(c) for c in r] for r in rows]
    widths = _widths(header, rows, minimum=3)
    left = [i < n_index for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(_pad(c, w, l) for c, w, l in zip(cells, widths, left)) + " |"  # noqa: E731
    rule = "| " + " | ".join((":" + "-" * (w - 1)) if l else ("-" * (w - 1) + ":") for w, l in zip(widths, left)) + " |"
    return "\n".join([line(header), rule, *(line(r) for r in rows)]) + "\n"


def format_table_text(table: pd.DataFrame) -> str:
    """``table`` as plain aligned text for a terminal: a header, a rule and one line per row."""
    header, rows, n_index = _grid(table)
    widths = _widths(header, rows)
    left = [i < n_index for i in range(len(header))]
    line = lambda cells: "  ".join(_pad(c, w, l) for c, w, l in zip(cells, widths, left)).rstrip()  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]) + "\n"


def write_table(
    table: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    title: str,
    caption_lines: Iterable[str] = (),
    stem: str = "results",
) -> tuple[Path, Path]:
    """Write ``<stem>.md`` and ``<stem>.csv`` into ``out_dir`` (atomically); return their paths.

    The markdown has ``# title``, the pipe table, then the caption: the table's own notes
    (units, protocol hashes, split columns; ``table.attrs["notes"]``) followed by
    ``caption_lines`` (the command, commit, device, ...), one bullet each. The CSV holds the
    long-form numbers (:data:`NUMBER_COLUMNS`: mean, std, ci_low and ci_high as separate
    columns, full precision) so that no number has to be parsed out of a cell; a table
    without ``attrs["numbers"]`` is written as its formatted cells instead.
    """
    out = Path(out_dir)
    caption = [*table.attrs.get("notes", []), *caption_lines]
    text = f"# {title}\n\n{table_markdown(table)}"
    if caption:
        text += "\n" + "".join(f"- {line}\n" for line in caption)
    md_path, csv_path = out / f"{stem}.md", out / f"{stem}.csv"
    write_text_atomic(md_path, text)
    if "numbers" in table.attrs:
        csv = numbers_of(table).to_csv(index=False, lineterminator="\n")
    else:
        csv = table.to_csv(lineterminator="\n")
    write_text_atomic(csv_path, csv)
    return md_path, csv_path


# --------------------------------------------------------------------------------------------
# Plots


def _band(curve: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper edges of the uncertainty band of :func:`results_numbers` records: mean ± std
    over 2+ seeds, the bootstrap interval of one seed, the mean itself (no band) without either."""
    mean, std = curve["mean"].to_numpy(float), curve["std"].to_numpy(float)
    single = curve["n"].to_numpy() == 1
    low = np.where(single, curve["ci_low"].to_numpy(float), mean - std)
    high = np.where(single, curve["ci_high"].to_numpy(float), mean + std)
    return np.where(np.isnan(low), mean, low), np.where(np.isnan(high), mean, high)


def plot_recall_curves(numbers: pd.DataFrame, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Plot recall@k against k (log axis), one line per row: the mean with a shaded band (± std over
    2+ seeds, the 95% bootstrap interval for a single seed that logged one); PNG.

    ``numbers``: :func:`results_numbers`'s frame (or a :func:`results_table`, whose numbers
    are used). Runs under different retrieval hashes get separate lines, labelled with the
    hash, and several backbones separate lines labelled with the backbone. Raises ValueError
    when there is no retrieval number to plot.
    """
    if "numbers" in numbers.attrs:
        numbers = numbers_of(numbers)
    recall = numbers[numbers["metric"].astype(str).str.startswith(RECALL_PREFIX)].copy()
    if recall.empty:
        raise ValueError("no retrieval numbers (eval/retrieval/R<k>) to plot")
    recall["k"] = recall["metric"].str[len(RECALL_PREFIX):].astype(int)
    hashes = _first_seen(recall["protocol_hash"])
    labels = _short_labels(hashes)
    several_backbones = recall["backbone"].nunique() > 1
    fig = new_figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for (row, backbone, h), curve in recall.groupby(["row", "backbone", "protocol_hash"], sort=False):
        curve = curve.sort_values("k")
        ks, (low, high) = curve["k"].to_numpy(), _band(curve)
        label = row + (f" ({backbone})" if several_backbones else "") + (f" [{labels[h]}]" if len(hashes) > 1 else "")
        (line,) = ax.plot(ks, curve["mean"].to_numpy(), marker="o", markersize=3.5, label=label)
        ax.fill_between(ks, np.clip(low, 0, 100), np.clip(high, 0, 100), color=line.get_color(), alpha=0.18, linewidth=0)
    ticks = sorted(recall["k"].unique())
    ax.set_xscale("log")
    ax.set_xticks(ticks, [str(k) for k in ticks])
    ax.minorticks_off()
    ax.set_ylim(0, 100)
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k (%)")
    ax.set_title(title or "Video retrieval: recall@k\n(band: ± std over seeds; one seed: 95% bootstrap interval)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return save_png(fig, path, dpi=150)


# --------------------------------------------------------------------------------------------
# One experiment, end to end


def report_experiment(
    experiment: str,
    *,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    out_dir: str | os.PathLike,
    caption_lines: Iterable[str] = (),
    title: str | None = None,
) -> dict[str, Any]:
    """Build the report of one experiment: ``results.md``, ``results.csv``, ``recall_curves.png``.

    Reads the runs with :func:`~core.tracking.runs_frame` (only the children of
    ``parent_run_id`` if given, else every run of the experiment, the latest per seed), builds
    :func:`results_table`, writes it with :func:`write_table` and plots the recall curves (when
    any run has retrieval numbers). Deterministic: the same store gives byte-identical files.

    Returns ``{"markdown": Path, "csv": Path, "recall_plot": Path | None, "table": DataFrame}``.
    """
    from core.tracking import runs_frame

    frame = runs_frame(experiment, tracking_uri=tracking_uri, parent_run_id=parent_run_id)
    table = results_table(frame, parent_run_id=parent_run_id)
    scope = (f"the children of suite run {parent_run_id}" if parent_run_id
             else "every suite run of the experiment, the latest run per (row, backbone, seed, protocol)")
    lines = [f"Experiment `{experiment}`: {table.attrs['runs']} finished runs from {scope}.", *caption_lines]
    md_path, csv_path = write_table(table, out_dir, title=title or f"Results: {experiment}", caption_lines=lines)
    numbers = numbers_of(table)
    recall_plot = None
    if numbers["metric"].astype(str).str.startswith(RECALL_PREFIX).any():
        recall_plot = plot_recall_curves(numbers, Path(out_dir) / "recall_curves.png")
    return {"markdown": md_path, "csv": csv_path, "recall_plot": recall_plot, "table": table}
