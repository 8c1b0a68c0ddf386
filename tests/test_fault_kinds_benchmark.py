"""The fault-kind breakdown (benchmarks/fault_kinds.py): AUC per fault kind and the bound it prints."""


import numpy as np
import pytest

from .conftest import benchmark_module

fk = benchmark_module("fault_kinds.py", "fault_kinds_benchmark")


def test_fault_aucs_compare_each_kind_with_the_same_machines_normals_only():
    machines = ["a/id_00"] * 6 + ["a/id_01"] * 4
    labels = [0, 0, 1, 1, 1, 1, 0, 0, 1, 1]
    kinds = ["", "", "x", "x", "y", "y", "", "", "x", "x"]
    scores = [0.1, 0.4, 0.9, 0.3, 0.0, 0.2, 5.0, 6.0, 1.0, 7.0]  # a/id_01's normals score high: only its own anomalies meet them
    aucs = fk.fault_aucs(machines, labels, kinds, scores)
    assert aucs == {"a/id_00": {"x": 0.75, "y": 0.25}, "a/id_01": {"x": 0.5}}


def test_summary_means_units_and_the_bound_by_hand():
    def seed(auc_x, auc_y):
        return {"levels": {"a/x": [-10.0, -12.0], "a/y": [-40.0, -243.0], "b/z": [-5.0]},
                "rows": {label: {"a/id_00": {"x": auc_x + (0.1 if label == fk.BASELINE else 0.0), "y": auc_y}, "b/id_00": {"z": 0.9}}
                         for label in [r[0] for r in fk.ROWS] + [fk.BASELINE]}}
    summary = fk.summarise({0: seed(0.9, 0.5), 1: seed(0.7, 0.55)})
    row = summary["table"]["a/x"]
    assert row["level_db"] == -11.0
    assert row[fk.BASELINE][0] == pytest.approx(0.9) and row[fk.BASELINE][1] == pytest.approx(0.1)  # SE of (1.0, 0.8)
    assert row[fk.ROWS[0][0]][0] == pytest.approx(0.8)
    assert summary["undetected"] == ["a/y"]  # every row below 0.6
    assert summary["bound"] == pytest.approx(np.mean([0.75, 1.0]))  # type a: x perfect, y at chance; type b perfect
    assert summary["best_per_kind"] == pytest.approx(np.mean([np.mean([0.9, 0.525]), 0.9]))  # the baseline's row is best on a/x
    text = fk.render(summary)
    assert "| a | x | -11 |" in text and "not detected by any row (every AUC < 0.6): a/y" in text
    assert summary["silent"] == {"a/y": [2, 4]}  # one clip a seed whose fault changed nothing
    assert "normal clips labelled anomalous): a/y 2 of 4" in text


def test_paired_differences_are_per_unit_and_marked_beyond_two_standard_errors():
    def seed(a_x, b_x, a_y, b_y):
        return {"rows": {"a": {"t/id_00": {"x": a_x, "y": a_y}}, "b": {"t/id_00": {"x": b_x, "y": b_y}}}}
    per_seed = {0: seed(0.9, 0.8, 0.5, 0.6), 1: seed(0.7, 0.6, 0.8, 0.6), 2: seed(0.8, 0.68, 0.6, 0.6)}
    d = fk.paired_differences(per_seed, "a", "b")
    assert d["t/x"][0] == pytest.approx(0.32 / 3) and d["t/x"][1] == pytest.approx(np.std([0.1, 0.1, 0.12], ddof=1) / np.sqrt(3))
    assert d["t/y"][0] == pytest.approx(0.1 / 3)  # -0.1, +0.2, 0: mean 0.033 +- 0.088
    text = fk.render_differences(per_seed, [("a", "b")])
    assert "| t | x | +0.107 +- 0.007 (beyond 2 SE) |" in text and "| t | y | +0.033 +- 0.088 |" in text


fbl = benchmark_module("fault_band_levels.py", "fault_band_levels_benchmark")


def test_band_levels_pool_the_seeds_clips_per_kind_and_carry_the_default_auc():
    seeds = [{"a/x": {"band_db": [-10.0, -20.0], "centre_hz": [100.0, 300.0]}, "a/y": {"band_db": [-40.0], "centre_hz": [5000.0]}},
             {"a/x": {"band_db": [-30.0], "centre_hz": [200.0]}}]
    aucs = {"table": {"a/x": {"level_db": -25.0, fbl.DEFAULT_ROW: [0.6, 0.02]}}}
    table = fbl.summarise(seeds, aucs)
    assert table["a/x"]["clips"] == 3 and table["a/x"]["band_db_median"] == -20.0 and table["a/x"]["centre_hz_median"] == 200.0
    assert table["a/x"]["band_db_p10"] == pytest.approx(-28.0) and table["a/x"]["band_db_p90"] == pytest.approx(-12.0)
    assert table["a/x"]["auc"] == [0.6, 0.02] and "auc" not in table["a/y"]
    lines = fbl.render(table, [0, 1]).splitlines()
    rows = [line for line in lines if line.startswith("| a |")]
    assert rows[0].startswith("| a | x | 3 | -20.0 (-28.0 to -12.0) | 200 | -25 | 0.600 +- 0.020 |")  # loudest kind first
    assert rows[1].startswith("| a | y | 1 | -40.0 (-40.0 to -40.0) | 5000 |")


def test_band_levels_plot_is_a_png_and_needs_aucs(tmp_path):
    table = {"a/x": {"band_db_median": -20.0, "band_db_p10": -28.0, "band_db_p90": -12.0, "centre_hz_median": 200.0, "clips": 3,
                     "level_db": -25.0, "auc": [0.6, 0.02]},
             "a/y": {"band_db_median": -40.0, "band_db_p10": -40.0, "band_db_p90": -40.0, "centre_hz_median": 5000.0, "clips": 1}}
    assert fbl.plot(table, tmp_path / "levels.png")
    assert (tmp_path / "levels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["levels.png"]  # no temp file left behind
    assert not fbl.plot({"a/y": table["a/y"]}, tmp_path / "none.png") and not (tmp_path / "none.png").exists()
