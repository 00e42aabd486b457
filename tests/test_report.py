"""harness.report against a real MLflow sqlite store written with Tracker, and real matplotlib PNGs."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.report import (
    MARKS,
    NUMBER_COLUMNS,
    _band,
    comparison_marks,
    distinguishable,
    format_table_text,
    numbers_of,
    plot_recall_curves,
    report_experiment,
    results_numbers,
    results_table,
    standard_error,
    table_markdown,
    write_table,
)
from core.figures import plot_retrieval_examples
from core.tracking import Tracker, runs_frame

EXP = "suite-report-test"
HASHES = {"retrieval": "retr000001", "linear": "lin0000001", "knn": "knn0000001", "finetune": "ft00000001", "probe": "prb0000001"}
BASE_HEADER = ["R@1", "R@5", "R@10", "R@20", "R@50", "linear top-1", "fine-tune top-1", "kNN top-1",
               "motion: shuffled", "motion: reversed", "motion: static"]
COST_HEADER = ["pretrain time (min)", "clips/s", "peak mem (GB)", "params (M)", "seeds"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _recall(r1, r5, r10, r20, r50) -> dict[str, float]:
    return {f"eval/retrieval/R{k}": v for k, v in zip((1, 5, 10, 20, 50), (r1, r5, r10, r20, r50))}


def _probe(shuffled, reversed_, static) -> dict[str, float]:
    return {"eval/probe/sim_shuffled": shuffled, "eval/probe/sim_reversed": reversed_, "eval/probe/sim_static": static}


def _cost(wall_s, clips_per_s, peak_mb, params) -> dict[str, float]:
    return {"pretrain/wall_time_s": wall_s, "pretrain/clips_per_s": clips_per_s, "pretrain/peak_memory_mb": peak_mb,
            "pretrain/params": params}


def _child(uri, experiment, parent, row, seed, metrics, *, kind="pretrain", backbone="r3d18", hashes=HASHES,
           status="FINISHED") -> str:
    tags = {"row": row, "kind": kind, "method": row.split("-")[0], "backbone": backbone, "seed": str(seed),
            **{f"protocol.{name}": h for name, h in hashes.items()}}
    tracker = Tracker(experiment, f"{row}-{backbone}-s{seed}", tracking_uri=uri, parent_run_id=parent, tags=tags)
    tracker.log_metrics(metrics, step=0)
    tracker.finish(status)
    return tracker.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One suite invocation (plus a stray run of another invocation) in a fresh sqlite store."""
    root = tmp_path_factory.mktemp("report-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with Tracker(EXP, "suite-old", tracking_uri=uri, tags={"kind": "suite"}) as old:
        _child(uri, EXP, old.run_id, "other", 0, _recall(0.9, 0.9, 0.9, 0.9, 0.9))
    with Tracker(EXP, "suite-test", tracking_uri=uri, tags={"kind": "suite"}) as parent:
        p = parent.run_id
        # a reference row started first still goes last
        _child(uri, EXP, p, "supervised", 0, {"eval/linear/top1": 0.90, "eval/retrieval/R1": 0.80}, kind="reference")
        _child(uri, EXP, p, "moco", 0, {**_recall(0.40, 0.60, 0.70, 0.80, 0.90), "eval/linear/top1": 0.55,
                                        "eval/knn/top1": 0.50, "eval/finetune/video_top1": 0.70,
                                        **_probe(0.9, 0.8, 0.95), **_cost(600, 100, 2048, 14_400_000)})
        _child(uri, EXP, p, "moco", 1, {**_recall(0.50, 0.70, 0.75, 0.85, 0.95), "eval/linear/top1": 0.65,
                                        "eval/knn/top1": 0.52, "eval/finetune/video_top1": 0.74,
                                        **_probe(0.8, 0.7, 0.85), **_cost(720, 110, 2048, 14_400_000)})
        _child(uri, EXP, p, "moco", 2, {**_recall(0.99, 0.99, 0.99, 0.99, 0.99), "eval/linear/top1": 0.99},
               status="FAILED")
        _child(uri, EXP, p, "iic-cmc", 0, {**_recall(0.30, 0.50, 0.60, 0.70, 0.80), "eval/linear/top1": 0.45,
                                           **_probe(0.5, 0.6, 0.7), "eval/probe/bias_gap": 0.20,
                                           **_cost(300, 200, 1024, 2_000_000)})
        _child(uri, EXP, p, "iic-cmc", 1, {**_recall(0.34, 0.52, 0.62, 0.72, 0.82), "eval/linear/top1": 0.47,
                                           **_probe(0.5, 0.6, 0.7), "eval/probe/bias_gap": 0.10,
                                           **_cost(300, 200, 1024, 2_000_000)})
        _child(uri, EXP, p, "random init", 0, {**_recall(0.10, 0.20, 0.30, 0.40, 0.50), "eval/linear/top1": 0.20,
                                               "eval/knn/top1": 0.15, **_probe(0.99, 0.99, 0.99)}, kind="reference")
    return {"uri": uri, "parent": p, "root": root}


@pytest.fixture(scope="module")
def table(store):
    return results_table(runs_frame(EXP, tracking_uri=store["uri"]), parent_run_id=store["parent"])


# --------------------------------------------------------------------------------------------
# results_table


def test_rows_in_documented_order(table):
    assert list(table.index) == ["moco", "iic-cmc", "random init", "supervised"]
    assert table.index.name == "row"  # one backbone: no backbone level


def test_columns_and_order(table):
    assert list(table.columns) == [*BASE_HEADER, "static-bias gap", *COST_HEADER]


def test_mean_pm_std_cells(table):
    moco = table.loc["moco"]
    assert moco["R@1"] == "45.0 ± 7.1"
    assert moco["R@5"] == "65.0 ± 7.1"
    assert moco["linear top-1"] == "60.0 ± 7.1"
    assert moco["kNN top-1"] == "51.0 ± 1.4"
    assert moco["fine-tune top-1"] == "72.0 ± 2.8"
    assert moco["motion: shuffled"] == "0.850 ± 0.071"
    assert moco["pretrain time (min)"] == "11.0 ± 1.4"
    assert moco["clips/s"] == "105.0 ± 7.1"
    assert moco["peak mem (GB)"] == "2.00 ± 0.00"
    assert moco["params (M)"] == "14.40"  # constant across seeds: no "± 0.00"
    assert moco["seeds"] == "2"  # the FAILED seed 2 is ignored
    iic = table.loc["iic-cmc"]
    assert iic["R@1"] == "32.0 ± 2.8"
    assert iic["static-bias gap"] == "15.0 ± 7.1"
    assert iic["motion: static"] == "0.700 ± 0.000"


def test_single_seed_and_missing_cells(table):
    ref = table.loc["random init"]
    assert ref["R@1"] == "10.0" and ref["linear top-1"] == "20.0" and ref["motion: static"] == "0.990"
    assert ref["seeds"] == "1"
    for column in ("fine-tune top-1", "static-bias gap", *COST_HEADER[:-1]):
        assert ref[column] == ""
    assert table.loc["iic-cmc", "fine-tune top-1"] == "" and table.loc["iic-cmc", "kNN top-1"] == ""
    assert table.loc["moco", "static-bias gap"] == ""
    assert table.loc["supervised", "R@5"] == "" and table.loc["supervised", "R@1"] == "80.0"


def test_numbers_and_parent_filter(store):
    frame = runs_frame(EXP, tracking_uri=store["uri"])
    numbers = results_numbers(frame, parent_run_id=store["parent"])
    assert list(numbers.columns) == NUMBER_COLUMNS
    r1 = numbers[(numbers["row"] == "moco") & (numbers["column"] == "R@1")].iloc[0]
    assert r1["mean"] == pytest.approx(45.0) and r1["std"] == pytest.approx(math.sqrt(50)) and r1["n"] == 2
    assert r1["protocol_hash"] == HASHES["retrieval"] and r1["unit"] == "%"
    assert "other" not in set(numbers["row"])
    everything = results_table(frame)  # no parent: every invocation's runs
    assert list(everything.index) == ["other", "moco", "iic-cmc", "random init", "supervised"]


def test_notes_list_protocol_hashes(table):
    notes = "\n".join(table.attrs["notes"])
    for protocol, h in HASHES.items():
        assert f"{protocol} {h}" in notes
    assert "split" not in notes


# --------------------------------------------------------------------------------------------
# Protocol hashes: never averaged, columns split


def test_different_protocol_hashes_split_columns(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Tracker("split", "suite", tracking_uri=uri, tags={"kind": "suite"}) as parent:
        for seed, (h, r1) in enumerate([("aaaaaa1111", 0.40), ("bbbbbb2222", 0.60)]):
            _child(uri, "split", parent.run_id, "moco", seed, {**_recall(r1, r1, r1, r1, r1), "eval/linear/top1": 0.5 + 0.2 * seed},
                   hashes={"retrieval": h, "linear": "lin0000001"})
    frame = runs_frame("split", tracking_uri=uri)
    table = results_table(frame)
    recall_columns = [c for c in table.columns if c.startswith("R@")]
    assert recall_columns == [f"R@{k} [{h}]" for k in (1, 5, 10, 20, 50) for h in ("aaaaaa", "bbbbbb")]
    assert table.loc["moco", "R@1 [aaaaaa]"] == "40.0" and table.loc["moco", "R@1 [bbbbbb]"] == "60.0"
    assert table.loc["moco", "linear top-1"] == "60.0 ± 14.1"  # same linear hash: averaged
    numbers = results_numbers(frame)
    r1 = numbers[numbers["metric"] == "eval/retrieval/R1"]
    assert sorted(r1["mean"]) == pytest.approx([40.0, 60.0]) and list(r1["n"]) == [1, 1]
    assert not (numbers["mean"].round(6) == 50.0).any()
    md, _ = write_table(table, tmp_path / "out", title="split", caption_lines=())
    text = md.read_text()
    assert "split into one column per protocol hash" in text
    assert "[aaaaaa] = aaaaaa1111" in text and "[bbbbbb] = bbbbbb2222" in text


def test_same_seed_twice_counts_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for r1 in (0.2, 0.6):  # two invocations; the second ran the seed again
        with Tracker("rerun", "suite", tracking_uri=uri, tags={"kind": "suite"}) as parent:
            _child(uri, "rerun", parent.run_id, "moco", 0, {"eval/retrieval/R1": r1})
    table = results_table(runs_frame("rerun", tracking_uri=uri))
    assert table.loc["moco", "R@1"] == "60.0" and table.loc["moco", "seeds"] == "1"


def test_backbone_level_and_untagged_hash():
    """A frame built by hand: several backbones add an index level; a run without a protocol tag is apart."""
    def run(i, row, backbone, seed, r1, h):
        tags = {"tags.row": row, "tags.backbone": backbone, "tags.seed": str(seed), "tags.protocol.retrieval": h}
        return {"run_id": f"r{i}", "status": "FINISHED", "start_time": pd.Timestamp(1000 + i, unit="s", tz="UTC"),
                "parent_run_id": "p", "metrics.eval/retrieval/R1": r1, **tags}
    frame = pd.DataFrame([run(0, "moco", "r3d18", 0, 0.4, "h1"), run(1, "moco", "r2plus1d", 0, 0.5, "h1"),
                          run(2, "moco", "r3d18", 1, 0.6, None), run(3, "random init", "r3d18", 0, float("nan"), "h1")])
    table = results_table(frame)
    assert table.index.names == ["row", "backbone"]
    assert list(table.index) == [("moco", "r3d18"), ("moco", "r2plus1d"), ("random init", "r3d18")]
    assert table.loc[("moco", "r3d18"), "R@1 [h1]"] == "40.0"
    assert table.loc[("moco", "r3d18"), "R@1 [no hash]"] == "60.0"
    assert table.loc[("random init", "r3d18"), "R@1 [h1]"] == ""  # NaN is missing, not a number
    assert "| row " in table_markdown(table) and "| backbone " in table_markdown(table)


# --------------------------------------------------------------------------------------------
# Writing and plotting


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_write_table_markdown_and_csv(table, tmp_path):
    md, csv = write_table(table, tmp_path, title="Test suite", caption_lines=["command: `vsbench suite x.toml`", "commit: abc"])
    lines = md.read_text().splitlines()
    assert lines[0] == "# Test suite"
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header == ["row", *BASE_HEADER, "static-bias gap", *COST_HEADER]
    assert set(lines[3]) <= set("|-: ") and lines[3].startswith("| :--")
    assert lines[4].startswith("| moco ") and "45.0 ± 7.1" in lines[4]
    assert len(lines[2]) == len(lines[4])  # padded into aligned columns
    assert "- command: `vsbench suite x.toml`" in lines and "- commit: abc" in lines
    assert not list(tmp_path.glob(".*.tmp"))

    back = pd.read_csv(csv)
    expected = numbers_of(table)
    assert list(back.columns) == NUMBER_COLUMNS and len(back) == len(expected)
    assert list(back["row"]) == list(expected["row"]) and list(back["column"]) == list(expected["column"])
    np.testing.assert_array_equal(back["mean"].to_numpy(), expected["mean"].to_numpy())
    np.testing.assert_array_equal(back["std"].to_numpy(), expected["std"].to_numpy())  # NaN for one seed
    np.testing.assert_array_equal(back["n"].to_numpy(), expected["n"].to_numpy())


def test_format_table_text(table):
    text = format_table_text(table)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["row", "R@1"]
    assert set(lines[1]) <= {"-", " "}
    assert [line.split("  ")[0].strip() for line in lines[2:]] == ["moco", "iic-cmc", "random init", "supervised"]
    cell = "45.0 ± 7.1"
    assert lines[2].index(cell) + len(cell) == lines[0].index("R@1") + len("R@1")  # right-aligned under its header


def test_recall_plot_png(table, tmp_path):
    path = plot_recall_curves(numbers_of(table), tmp_path / "recall.png")
    width, height = _png_size(path)
    assert width > 400 and height > 300 and path.stat().st_size > 10_000
    with pytest.raises(ValueError):
        plot_recall_curves(numbers_of(table).iloc[0:0], tmp_path / "none.png")


def test_retrieval_examples_png(tmp_path):
    rng = np.random.default_rng(0)
    queries = rng.integers(0, 256, (3, 8, 24, 32, 3), dtype=np.uint8)
    neighbours = rng.integers(0, 256, (3, 5, 8, 24, 32, 3), dtype=np.uint8)
    query_labels = np.array([0, 1, 2])
    neighbour_labels = np.array([[0, 0, 1, 2, 0], [1, 2, 1, 1, 0], [2, 2, 2, 2, 2]])
    path = plot_retrieval_examples(queries, neighbours, query_labels, neighbour_labels, ["MoveLeft", "Grow", "Spin"],
                                   tmp_path / "examples.png")
    width, height = _png_size(path)
    assert width > 1000 and height > 200 and width > height
    with pytest.raises(TypeError):
        plot_retrieval_examples(queries.astype(np.float32), neighbours, query_labels, neighbour_labels, [], tmp_path / "x.png")
    with pytest.raises(ValueError):
        plot_retrieval_examples(queries, neighbours[:2], query_labels, neighbour_labels, [], tmp_path / "x.png")


def test_report_experiment_is_deterministic(store, tmp_path):
    outs = [report_experiment(EXP, tracking_uri=store["uri"], parent_run_id=store["parent"], out_dir=tmp_path / name,
                              caption_lines=["device: test"]) for name in ("a", "b")]
    for key in ("markdown", "csv", "recall_plot"):
        a, b = outs[0][key], outs[1][key]
        assert a.exists() and a.name == b.name and a.read_bytes() == b.read_bytes()
    text = outs[0]["markdown"].read_text()
    assert f"Experiment `{EXP}`: 6 finished runs" in text and "- device: test" in text


def test_empty_experiment(tmp_path):
    out = report_experiment("nothing-here", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", out_dir=tmp_path / "out")
    assert out["recall_plot"] is None and len(out["table"]) == 0
    header = out["markdown"].read_text().splitlines()[2]
    assert [c.strip() for c in header.strip("|").split("|")] == ["row", *BASE_HEADER, *COST_HEADER]


# --------------------------------------------------------------------------------------------
# Uncertainty: single-seed bootstrap intervals and the marks of rows the table cannot tell apart


def _ci(metric: str, low: float, high: float) -> dict[str, float]:
    return {f"{metric}_ci_low": low, f"{metric}_ci_high": high}


@pytest.fixture(scope="module")
def ci_store(store):
    """moco: 2 seeds (intervals logged but not shown); dclr, iic, random init: one seed with intervals.
    Another experiment in the first fixture's store (creating a store costs seconds)."""
    uri = store["uri"]
    r1, r5, lin = "eval/retrieval/R1", "eval/retrieval/R5", "eval/linear/top1"
    with Tracker("ci", "suite", tracking_uri=uri, tags={"kind": "suite"}) as parent:
        p = parent.run_id
        for seed, (a, b, c) in enumerate([(0.40, 0.35, 0.55), (0.50, 0.45, 0.65)]):  # R1 45 ± 7.1, R5 40 ± 7.1
            _child(uri, "ci", p, "moco", seed, {r1: a, **_ci(r1, a - 0.05, a + 0.05), r5: b, lin: c})
        _child(uri, "ci", p, "dclr", 0, {r1: 0.47, **_ci(r1, 0.40, 0.54), lin: 0.80, **_ci(lin, 0.75, 0.85)})
        _child(uri, "ci", p, "iic", 0, {r1: 0.14, **_ci(r1, 0.06, 0.22), r5: 0.30, **_ci(r5, 0.20, 0.40),
                                        **_probe(0.99, 0.99, 0.99)})
        _child(uri, "ci", p, "random init", 0, {r1: 0.10, **_ci(r1, 0.05, 0.15), r5: 0.20, **_ci(r5, 0.10, 0.30),
                                                lin: 0.20, **_probe(0.99, 0.99, 0.99)}, kind="reference")
    return runs_frame("ci", tracking_uri=uri)


@pytest.fixture(scope="module")
def ci_table(ci_store):
    return results_table(ci_store)


def test_single_seed_cell_shows_its_interval(ci_table):
    assert ci_table.loc["random init", "R@1"] == "10.0 [5.0, 15.0]"  # a reference row carries no mark of its own
    assert ci_table.loc["random init", "linear top-1"] == "20.0"  # no interval logged: the value alone
    assert ci_table.loc["dclr", "linear top-1"] == "80.0 [75.0, 85.0]"  # 80 +- 2.6 vs moco 60 +- 5: they differ
    assert ci_table.loc["iic", "motion: static"] == "0.990"  # probes: no interval, no mark


def test_multi_seed_cell_keeps_mean_pm_std(ci_table, ci_store):
    assert ci_table.loc["moco", "R@1"] == "45.0 ± 7.1"  # the seeds' own intervals are not shown
    numbers = results_numbers(ci_store)
    moco = numbers[(numbers["row"] == "moco") & (numbers["column"] == "R@1")].iloc[0]
    assert moco["n"] == 2 and math.isnan(moco["ci_low"]) and math.isnan(moco["ci_high"])


def test_numbers_and_csv_carry_the_interval(ci_table, tmp_path):
    numbers = numbers_of(ci_table)
    dclr = numbers[(numbers["row"] == "dclr") & (numbers["column"] == "R@1")].iloc[0]
    assert (dclr["mean"], dclr["ci_low"], dclr["ci_high"]) == pytest.approx((47.0, 40.0, 54.0))
    rand = numbers[(numbers["row"] == "random init") & (numbers["column"] == "linear top-1")].iloc[0]
    assert math.isnan(rand["ci_low"]) and math.isnan(rand["ci_high"])
    _, csv = write_table(ci_table, tmp_path, title="ci")
    back = pd.read_csv(csv)
    assert list(back.columns) == NUMBER_COLUMNS and {"ci_low", "ci_high"} <= set(back.columns)
    np.testing.assert_array_equal(back["ci_low"].to_numpy(), numbers["ci_low"].to_numpy())
    np.testing.assert_array_equal(back["ci_high"].to_numpy(), numbers["ci_high"].to_numpy())


def test_standard_error_and_distinguishability_by_hand():
    assert standard_error(math.sqrt(50), 2, math.nan, math.nan) == pytest.approx(5.0)  # std / sqrt(n)
    assert standard_error(math.nan, 1, 40.0, 54.0) == pytest.approx(14.0 / 3.92)  # half-width / 1.96
    assert standard_error(math.nan, 1, math.nan, math.nan) is None  # one seed, no interval: unknown
    # se 3 and 4: sqrt(9 + 16) = 5, so the threshold is 1.96 * 5 = 9.8
    assert not distinguishable(0.0, 3.0, 9.79, 4.0) and distinguishable(0.0, 3.0, 9.81, 4.0)
    assert distinguishable(9.81, 4.0, 0.0, 3.0)  # symmetric
    assert not distinguishable(47.0, 14.0 / 3.92, 45.0, 5.0)  # dclr vs moco below: 2 < 12.0


def _number(row, column, mean, std, n, low=math.nan, high=math.nan, backbone="r3d18", metric=None):
    metric = metric or {"R@1": "eval/retrieval/R1", "kNN top-1": "eval/knn/top1",
                        "motion: static": "eval/probe/sim_static"}[column]
    return {"row": row, "backbone": backbone, "column": column, "metric": metric, "protocol": "", "protocol_hash": "",
            "unit": "%", "mean": mean, "std": std, "ci_low": low, "ci_high": high, "n": n}


def test_comparison_marks_on_a_hand_built_frame():
    numbers = pd.DataFrame([
        _number("random init", "R@1", 10.0, math.nan, 1, 5.0, 15.0),   # se 2.55
        _number("moco", "R@1", 40.0, math.sqrt(50), 2),                  # se 5
        _number("a", "R@1", 14.0, math.nan, 1, 6.0, 22.0),               # se 4.08: ~random (4 < 9.4), not ~moco (26 > 12.6)
        _number("b", "R@1", 25.0, math.sqrt(200), 2),                    # se 10: 15 < 20.2 and 15 < 21.9 -> both
        _number("c", "R@1", 39.0, math.nan, 1),                          # no uncertainty: never marked
        _number("random init", "kNN top-1", 30.0, math.nan, 1),         # a reference without uncertainty...
        _number("d", "kNN top-1", 30.0, 1.0, 3),                         # ...marks nothing
        _number("random init", "motion: static", 0.9, 0.01, 2),         # probes are not compared
        _number("d", "motion: static", 0.9, 0.01, 2),
        _number("e", "R@1", 10.0, 1.0, 2, backbone="r2plus1d"),          # no reference row of its backbone
    ], columns=NUMBER_COLUMNS)
    assert comparison_marks(numbers) == {("a", "r3d18", "R@1"): MARKS["random init"],
                                         ("b", "r3d18", "R@1"): f"{MARKS['random init']} {MARKS['moco']}"}
    assert MARKS == {"random init": "≈R", "moco": "≈M"}
    # a reference row is never compared with itself, only with the other reference row
    close = pd.DataFrame([_number("random init", "R@1", 10.0, 1.0, 2), _number("moco", "R@1", 11.0, 1.0, 2)],
                         columns=NUMBER_COLUMNS)
    assert comparison_marks(close) == {("random init", "r3d18", "R@1"): "≈M", ("moco", "r3d18", "R@1"): "≈R"}


def test_marks_in_the_table(ci_table):
    # iic R@1 14 +- 4.1 vs random init 10 +- 2.6: indistinguishable; vs moco 45 +- 5: different
    assert ci_table.loc["iic", "R@1"] == "14.0 [6.0, 22.0] ≈R"
    # iic R@5 30 +- 5.1 vs random init 20 +- 5.1 (10 < 14.1) and vs moco 40 +- 5 (10 < 14.0)
    assert ci_table.loc["iic", "R@5"] == "30.0 [20.0, 40.0] ≈R ≈M"
    assert ci_table.loc["dclr", "R@1"] == "47.0 [40.0, 54.0] ≈M"
    assert ci_table.loc["moco", "R@5"] == "40.0 ± 7.1" and ci_table.loc["random init", "R@5"] == "20.0 [10.0, 30.0]"
    assert "30.0 [20.0, 40.0] ≈R ≈M |" in table_markdown(ci_table)


def test_note_under_the_table_states_the_rule(ci_table, table, tmp_path):
    md, _ = write_table(ci_table, tmp_path, title="ci")
    text = md.read_text()
    assert "value [low, high]" in text and "95% bootstrap interval over test videos" in text
    assert "Marks: ≈R = not distinguishable from the 'random init' row; ≈M = not distinguishable from the 'moco' row" in text
    assert "|mean_a - mean_b| > 1.96 * sqrt(se_a^2 + se_b^2)" in text
    assert "se = std / sqrt(n)" in text and "se = (high - low) / (2 * 1.96)" in text
    assert "A cell without uncertainty (one seed, no interval), or whose reference cell has none, is not compared" in text
    assert any("1.96" in note for note in table.attrs["notes"])  # the first store has both reference rows too


def test_no_marks_note_without_a_reference_row(tmp_path):
    frame = pd.DataFrame([{"run_id": "r0", "status": "FINISHED", "start_time": pd.Timestamp(1000, unit="s", tz="UTC"),
                           "tags.row": "iic", "tags.seed": "0", "metrics.eval/retrieval/R1": 0.3}])
    notes = "\n".join(results_table(frame).attrs["notes"])
    assert "1.96" not in notes and "value [low, high]" in notes


def test_half_an_interval_is_an_error():
    frame = pd.DataFrame([{"run_id": "r7", "status": "FINISHED", "start_time": pd.Timestamp(1000, unit="s", tz="UTC"),
                           "tags.row": "iic", "tags.seed": "3", "metrics.eval/knn/top1": 0.3,
                           "metrics.eval/knn/top1_ci_low": 0.2, "metrics.eval/knn/top1_ci_high": float("nan")}])
    with pytest.raises(ValueError, match=r"run r7 \(row 'iic', seed 3\).*eval/knn/top1_ci_high is missing"):
        results_table(frame)


def test_recall_plot_shows_the_intervals(ci_table, tmp_path):
    numbers = numbers_of(ci_table)
    r1 = numbers[numbers["column"] == "R@1"].set_index("row")
    low, high = _band(r1)
    bands = dict(zip(r1.index, zip(low, high)))
    assert bands["moco"] == pytest.approx((45.0 - math.sqrt(50), 45.0 + math.sqrt(50)))  # ± std over seeds
    assert bands["dclr"] == pytest.approx((40.0, 54.0))  # one seed: its bootstrap interval
    path = plot_recall_curves(numbers, tmp_path / "with.png")
    width, height = _png_size(path)
    assert width > 400 and height > 300
    without = numbers.assign(ci_low=math.nan, ci_high=math.nan)  # as if no run had logged an interval
    dclr_low, dclr_high = _band(without[(without["row"] == "dclr") & (without["column"] == "R@1")])
    assert list(dclr_low) == list(dclr_high) == [47.0]  # one seed without an interval: no band
    plain = plot_recall_curves(without, tmp_path / "without.png")
    assert path.read_bytes() != plain.read_bytes()  # the single-seed bands are drawn
