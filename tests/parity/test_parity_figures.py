"""Parity that can tell: dAUC with a seeded bootstrap interval, score-level figures, decision
agreement, and an on-device reference set of settable size with budgets suited to it."""

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from mtad.edge_runtime.parity import (DEFAULT_SCORE_BUDGETS, MIN_SPREAD_CLIPS, Scored, auc_by_ranks, compare, dauc_interval, format_report,
                                      pooled_spreads, roc_auc, size_adjusted_budget)


def _scored(scores, labels, machine="fan/id_00", threshold=1.0):
    return [Scored(f"c{i}", machine, int(lab), float(s), threshold) for i, (s, lab) in enumerate(zip(scores, labels))]


@pytest.mark.parametrize("seed", range(3))
def test_rank_auc_equals_roc_auc_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(9), np.zeros(11)]
    s = np.round(rng.standard_normal(20) + y, 1)
    assert auc_by_ranks(y, s) == pytest.approx(roc_auc(y, s), abs=1e-12)


def test_dauc_interval_is_seeded_paired_and_covers_the_drift():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(50), np.zeros(50)]
    ref = rng.standard_normal(100) + 1.5 * y
    assert dauc_interval(y, ref, ref) == (0.0, 0.0)  # paired: the same clips for both, no drift, no width
    var = ref + 0.5 * rng.standard_normal(100)
    lo, hi = dauc_interval(y, ref, var, seed=3)
    assert dauc_interval(y, ref, var, seed=3) == (lo, hi) and dauc_interval(y, ref, var, seed=4) != (lo, hi)
    d = roc_auc(y, var) - roc_auc(y, ref)
    assert lo < d < hi and 0.01 < hi - lo < 0.2


def test_compare_reports_score_level_figures_and_decisions():
    y = np.r_[np.ones(8), np.zeros(8)]
    ref = np.r_[np.linspace(1.25, 2.0, 8), np.linspace(0.5, 1.2, 8)]  # anomalies score higher
    var = ref * np.r_[np.ones(15), 1.1]  # one normal clip moves 10 %: over the 1.3 threshold, past one anomaly
    res = compare(_scored(ref, y, threshold=1.3), _scored(var, y, threshold=1.3), 0.01, DEFAULT_SCORE_BUDGETS["fp16"])
    e = res["machines"]["fan/id_00"]
    assert e["n"] == 16 and e["n_anomalous"] == 8
    assert e["max_rel_error"] == pytest.approx(0.12 / ref.std()) and e["max_rel_error"] > 0.25  # the clip moved 0.12, a quarter of the spread
    assert e["decision_flips"] == 1 and e["decision_agreement"] == pytest.approx(15 / 16)
    assert e["dauc"] == pytest.approx(-1 / 64) and e["over_budget"]  # one swapped pair
    assert e["score_over_budget"] and res["score_over_budget"] == ["fan/id_00"]
    assert e["dauc_ci"][0] <= e["dauc"] <= e["dauc_ci"][1]
    nudged = ref + np.r_[np.zeros(15), 0.05]  # a tenth of the spread: ties one anomaly, within INT8's 25 %
    small = compare(_scored(ref, y), _scored(nudged, y), 0.01, DEFAULT_SCORE_BUDGETS["int8"], size_adjusted=True)["machines"]["fan/id_00"]
    assert small["budget"] == size_adjusted_budget(0.01, 8, 8) == 1 / 64 and not small["over_budget"]
    assert small["max_rel_error"] == pytest.approx(0.05 / ref.std()) and not small["score_over_budget"]
    table = format_report({"onnxruntime-int8": res})
    assert "95% CI" in table and "max rel" in table and "8+8" in table and "OVER BUDGET  SCORE DRIFT" in table


@pytest.mark.parametrize("tens, part", [(7, 1), (8, 5)])  # AUC 0.71 -> 0.70 and 0.85 -> 0.84
def test_one_swapped_pair_is_within_a_one_pair_budget_whichever_way_floats_round(tens, part):
    """Normals score 0..9; an anomaly at k + 0.5 outranks k + 1 of them. Dropping the anomaly at
    ``part - 0.5`` by one swaps exactly one pair. In floats that dAUC is 0.010000000000000009 for
    0.71 -> 0.70 and 0.009999999999999898 for 0.85 -> 0.84; both are one pair, within its budget."""
    y = np.r_[np.ones(10), np.zeros(10)]
    anomalies = np.r_[np.full(tens, 9.5), part - 0.5, np.full(9 - tens, -1.0)]
    ref = np.r_[anomalies, np.arange(10.0)]
    one = ref.copy()
    one[tens] -= 1.0
    assert roc_auc(y, ref) == pytest.approx((10 * tens + part) / 100) and roc_auc(y, one) == pytest.approx((10 * tens + part - 1) / 100)
    e = compare(_scored(ref, y), _scored(one, y), 0.01, size_adjusted=True)["machines"]["fan/id_00"]
    assert e["budget"] == 0.01 and not e["over_budget"]
    assert (abs(e["dauc"]) > 0.01) == (tens == 7)  # the rounding the slack is there for, both ways
    two = one.copy()
    two[0] -= 1.0  # a second anomaly falls below the normal at 9: two pairs
    e2 = compare(_scored(ref, y), _scored(two, y), 0.01, size_adjusted=True)["machines"]["fan/id_00"]
    assert e2["dauc"] == pytest.approx(-0.02) and e2["over_budget"]


def test_reference_set_size_is_settable(tiny_synth, tiny_run):
    from mtad.export.reference_set import build_reference_set
    from mtad.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_run)
    machines, window = ckpt["class_map"], ckpt["config"]["model"]["window"]
    ref = build_reference_set(tiny_synth, machines, window, per_class=3)
    for m in machines:
        mine = ref["labels"][ref["machines"] == m]
        assert (mine == 0).sum() == 3 and (mine == 1).sum() == 3
    assert ref["audio"].shape[1] == (window + 8) * 512  # just enough audio for the model, by default


def test_device_parity_json_has_intervals_and_size_suited_budgets(tiny_bundle, tmp_path):
    from mtad.export.parity_cli import main as parity_main

    manifest = yaml.safe_load((tiny_bundle / "manifest.yaml").read_text())
    rec = manifest["reference"]
    assert rec["bytes"] > 0 and all(n0 >= 1 and n1 >= 1 for n0, n1 in rec["normal_anomalous_per_machine"].values())
    res = CliRunner().invoke(parity_main, ["--bundle", str(tiny_bundle), "--json", str(tmp_path / "p.json"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "95% CI" in res.output and "lowest rho" in res.output
    out = json.loads((tmp_path / "p.json").read_text())
    assert out["score_budgets"]["int8"] == DEFAULT_SCORE_BUDGETS["int8"]
    for name, v in out["variants"].items():
        assert v["size_adjusted"] and v["ci"]["seed"] == 0
        for m, e in v["machines"].items():
            n0, n1 = rec["normal_anomalous_per_machine"][m]
            assert e["budget"] == pytest.approx(max(out["budgets"][name.split("-")[-1]], 1 / (n0 * n1)))
            assert e["dauc_ci"][0] <= e["dauc"] <= e["dauc_ci"][1]
            assert e["spearman"] is None or -1 <= e["spearman"] <= 1


def test_a_broken_model_component_is_not_hidden_by_the_model_free_ones():
    """Learned fusion = (recon + 2 acoustic) / 3: a variant whose recon drifts by 0.6 of recon's
    spread moves the fused score by little, since acoustic (model-free, identical on both sides)
    holds most of its spread; the per-component figure still catches it."""
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(20), np.zeros(20)]
    recon, acoustic = rng.standard_normal(40), 20 * rng.standard_normal(40) + 40 * y
    drift = 0.6 * recon.std() * np.sign(rng.standard_normal(40))

    def scored(r):
        return [Scored(f"c{i}", "fan/id_00", int(lab), float((ri + 2 * a) / 3), 1.0, {"recon": float(ri), "acoustic": float(a)})
                for i, (ri, a, lab) in enumerate(zip(r, acoustic, y))]

    ref, var = scored(recon), scored(recon + drift)
    fused = np.abs((drift / 3)).max() / np.std([s.score for s in ref])
    assert fused < 0.05  # the fused score alone would pass INT8's 0.25 budget
    e = compare(ref, var, 0.01, DEFAULT_SCORE_BUDGETS["int8"])["machines"]["fan/id_00"]
    assert e["max_component_rel_error"] == pytest.approx(0.6, rel=1e-6) and e["max_rel_error"] == pytest.approx(0.6, rel=1e-6)
    assert e["score_over_budget"]
    plain = compare(_scored([s.score for s in ref], y), _scored([s.score for s in var], y), 0.01, DEFAULT_SCORE_BUDGETS["int8"])["machines"]["fan/id_00"]
    assert plain["max_component_rel_error"] is None and not plain["score_over_budget"]  # without components: the fused score only


def test_few_reference_clips_measure_drift_against_the_pooled_spread():
    """Two normals a machine (accuracy control on held-out training normals of a tiny set): their
    own std is noise, and a near tie would make a drift of 0.01 look like many spreads. Under
    MIN_SPREAD_CLIPS clips the scale is the within-machine spread pooled over the machines."""
    assert MIN_SPREAD_CLIPS == 10
    ref = [Scored("a0", "fan/id_00", 0, 1.000, 9.0), Scored("a1", "fan/id_00", 0, 1.002, 9.0),  # a near tie
           Scored("b0", "fan/id_02", 0, 0.0, 9.0), Scored("b1", "fan/id_02", 0, 2.0, 9.0)]
    var = [Scored(r.key, r.machine, r.label, r.score + (0.01 if r.key == "a0" else 0.0), r.threshold) for r in ref]
    res = compare(ref, var, 0.01, DEFAULT_SCORE_BUDGETS["int8"])
    pooled = np.sqrt(np.mean(np.array([0.001, 0.001, 1.0, 1.0]) ** 2))  # deviations from each machine's own mean
    assert pooled_spreads([list(zip(ref[:2], var[:2])), list(zip(ref[2:], var[2:]))])[None] == pytest.approx(pooled)
    assert res["machines"]["fan/id_00"]["max_rel_error"] == pytest.approx(0.01 / pooled)  # not 0.01 / 0.001 = 10
    assert not res["score_over_budget"]
    many = [Scored(f"c{i}", "fan/id_00", 0, float(i), 9.0) for i in range(MIN_SPREAD_CLIPS)]
    moved = [Scored(s.key, s.machine, 0, s.score + (1.0 if s.key == "c0" else 0.0), 9.0) for s in many]
    e = compare(many + ref[2:], moved + var[2:], 0.01, DEFAULT_SCORE_BUDGETS["int8"])["machines"]["fan/id_00"]
    assert e["max_rel_error"] == pytest.approx(1.0 / np.std(np.arange(MIN_SPREAD_CLIPS)))  # enough clips: the machine's own std
