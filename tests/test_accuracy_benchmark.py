"""The accuracy benchmark's statistics (benchmarks/accuracy.py): paired verdicts, the summary
over seeds and (seed, id) units, and the scoring variants it switches in and out."""


import numpy as np
import pytest
from scipy import stats

from mtad.edge_runtime import scoring

from .conftest import benchmark_module

acc = benchmark_module("accuracy.py", "accuracy_benchmark")
DEFAULT = acc.METHODS[0][1]


def test_paired_uses_the_larger_standard_error_and_two_of_them():
    assert acc.paired(0.05, 0.01, 0.02).endswith("better")  # 0.05 > 2 x 0.02
    assert acc.paired(0.03, 0.01, 0.02).endswith("tie (within 2 SE)")  # the unit SE decides
    assert acc.paired(0.03, 0.02, 0.01).endswith("tie (within 2 SE)")  # the seed SE decides
    assert acc.paired(-0.05, float("nan"), 0.01) == "-0.050 +- 0.010: worse"  # one seed: the unit SE


def test_summary_over_seeds_and_units_by_hand():
    machines = ["a/id_00", "a/id_01", "b/id_00", "b/id_01"]
    aucs = {  # seed -> method -> AUC per machine
        0: {acc.BASELINE: [0.6, 0.6, 0.6, 0.6], DEFAULT: [0.8, 0.8, 0.6, 0.7]},
        1: {acc.BASELINE: [0.6, 0.6, 0.6, 0.7], DEFAULT: [0.9, 0.7, 0.5, 0.5]},
    }
    fars = {0: [0.1, 0.2, 0.06, 0.0], 1: [0.12, 0.1, 0.3, 0.04]}  # the default's false-alarm rate per machine
    per_seed = {s: {meth: {m: (a, a, None if meth == acc.BASELINE else f) for m, a, f in zip(machines, v, fars[s])} for meth, v in d.items()}
                for s, d in aucs.items()}
    summary = acc.summarise(per_seed)
    mean = summary["table"][DEFAULT]["mean"]
    # seed means (mean over types of the mean over ids): default 0.725, 0.65; baseline 0.6, 0.625
    assert mean["auc"] == pytest.approx(0.6875) and mean["se"] == pytest.approx(np.std([0.725, 0.65], ddof=1) / np.sqrt(2))
    assert mean["diff"] == pytest.approx(0.075) and mean["diff_se"] == pytest.approx(0.05)
    units = np.array([0.2, 0.2, 0.0, 0.1, 0.3, 0.1, -0.1, -0.2])  # default - baseline per (seed, id)
    assert mean["diff_units_se"] == pytest.approx(units.std(ddof=1) / np.sqrt(8))
    assert mean["far"] == pytest.approx(0.115) and summary["table"][acc.BASELINE]["mean"]["far"] is None
    # distances from the 0.1 target: 0, .1, .04, .1, .02, 0, .2, .06 -> 4 of 8 within 0.05
    assert mean["far_within"] == pytest.approx(0.5) and mean["far_distance"] == pytest.approx(0.065)
    assert mean["far_worst"] == pytest.approx(0.3) and mean["far_sd"] == pytest.approx(np.std(fars[0] + fars[1], ddof=1))
    assert summary["table"][acc.BASELINE]["mean"]["far_within"] is None
    b = summary["table"][DEFAULT]["b"]
    assert b["auc"] == pytest.approx(0.575) and b["diff"] == pytest.approx(-0.05)
    assert b["diff_se"] == pytest.approx(np.std([0.0, 0.1, -0.1, -0.2], ddof=1) / 2)
    text = acc.render(summary)
    assert "b -0.050 +- 0.065" in text and "below the baseline under the default: none" in text
    assert "| 0.115 | 50 % |" in text and "within +-0.05 of 0.1 for 50 %, mean distance 0.065" in text and "worst 0.30" in text


def test_scoring_variants_are_switched_back():
    logmel = np.random.default_rng(0).standard_normal((128, 100)).astype(np.float32)
    dim = scoring.spectral_vector(logmel).shape
    with acc.scoring_variant("equal"):
        assert scoring.component_weight("acoustic") == 1
    assert scoring.component_weight("acoustic") == 2
    with pytest.raises(RuntimeError), acc.scoring_variant("v1"):
        assert scoring.spectral_vector(logmel).shape == (2 * 128 // scoring.SPECTRAL_BAND,)
        raise RuntimeError("a failing method")
    assert scoring.spectral_vector(logmel).shape == dim
    relative = scoring.spectral_vector(logmel)
    with acc.scoring_variant("absolute"):
        absolute = scoring.spectral_vector(logmel)
    bands = 128 // scoring.SPECTRAL_BAND
    assert np.allclose(absolute[:bands] - absolute[:bands].mean(), relative[:bands]) and np.allclose(absolute[bands:], relative[bands:])
    assert np.array_equal(scoring.spectral_vector(logmel), relative)
    with acc.scoring_variant("absolute+fixedfloor"):
        assert scoring.SPECTRAL_TOP_DB is None and not scoring.RELATIVE_LEVEL
    assert scoring.SPECTRAL_TOP_DB == 80.0 and scoring.RELATIVE_LEVEL
    with pytest.raises(ValueError, match="unknown scoring variant"), acc.scoring_variant("lw+floor"):
        pass
    # "nolines" cuts the line strengths from the envelope statistic's end (the statistic of schema 9),
    # "notonal" the band flatness before them as well (the statistic of schema 8)
    from mtad.edge_runtime.envelope import envelope_dim, lines_dim, tonality_dim

    st = scoring.ScoringStats("multitask", [], {})
    ev = scoring.ClipEvidence(None, None, logmel, envelope=np.arange(envelope_dim(), dtype=float))
    with acc.scoring_variant("nolines"):
        assert np.array_equal(st.component_vector("envelope", ev), ev.envelope[:96])
        assert st.component_vector("acoustic", ev).shape == (dim[0] + 96,)
    with acc.scoring_variant("notonal"):
        assert np.array_equal(st.component_vector("envelope", ev), ev.envelope[:84])
        assert st.component_vector("acoustic", ev).shape == (dim[0] + 84,)
    assert np.array_equal(st.component_vector("envelope", ev), ev.envelope)
    assert (envelope_dim(), tonality_dim(), lines_dim()) == (132, 12, 36)


def test_every_row_names_a_trained_variant_and_valid_components():
    labels = [m[1] for m in acc.METHODS]
    assert len(labels) == len(set(labels))  # a duplicate label would overwrite a cached row
    for variant, label, method, comps, *version in acc.METHODS:
        assert variant in acc.VARIANTS, label
        allowed = scoring.MODEL_FREE if variant == acc.MODEL_FREE_VARIANT else scoring.task_components(acc.VARIANTS[variant][0])
        assert method in scoring.SCORINGS and set(comps) <= set(allowed), label
        assert not version or set(version[0].split("+")) <= set(acc.SCORING_VARIANTS), label
    # the default row is the product's default score, and needs no trained model
    assert acc.METHODS[0][0] == acc.MODEL_FREE_VARIANT and acc.METHODS[0][3] == scoring.DEFAULT_COMPONENTS


def test_rows_option_keeps_the_default_and_the_matching_rows_of_the_variants_asked_for():
    rows = acc.selected_methods(["none", "multitask", "holdout25"], ["learned fusion recon+acoustic (", "stats-holdout"])
    assert [m[1] for m in rows] == [DEFAULT, "learned fusion recon+acoustic (weights 1:2; the default before schema 7)",
                                    "learned fusion, --stats-holdout 0.25", "component recon, --stats-holdout 0.25"]
    assert acc.selected_methods(["none"], []) == [m for m in acc.METHODS if m[0] == "none"]


def test_data_option_names_each_missing_dataset(tmp_path, monkeypatch, capsys):
    (tmp_path / "set1").mkdir()
    monkeypatch.setattr("sys.argv", ["accuracy.py", "--data", str(tmp_path / "set{seed}"), "--seeds", "1,2", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exc:
        acc.main()
    assert exc.value.code == 2 and f"no such directory: {tmp_path / 'set2'}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_expected_share_within_matches_a_simulation_of_exchangeable_scores():
    """Per-id conformal thresholds from n exchangeable calibration scores, judged on 50 test normals:
    the beta-binomial share equals a direct simulation, and it grows with n toward the binomial limit."""
    rng = np.random.default_rng(0)
    for n in (10, 20, 40):
        k = scoring.conformal_rank(n, 0.1)
        draws = rng.standard_normal((20000, n + 50))  # any continuous distribution: the result is distribution-free
        thresholds = np.sort(draws[:, :n], axis=1)[:, k - 1]
        rate = (draws[:, n:] > thresholds[:, None]).mean(axis=1)
        simulated = np.mean(np.abs(rate - 0.1) <= 0.05 + 1e-9)
        assert acc.expected_far_within(n, 50) == pytest.approx(simulated, abs=0.01), n
    assert acc.expected_far_within(20, 50) == pytest.approx(0.4751, abs=1e-4)
    known = stats.binom.cdf(7, 50, 0.1) - stats.binom.cdf(2, 50, 0.1)  # 3..7 false alarms of 50: the threshold known exactly
    assert acc.expected_far_within(100_000, 50) == pytest.approx(known, abs=2e-3) and known == pytest.approx(0.766, abs=1e-3)
    assert acc.expected_far_within(5, 50) is None  # no conformal rank for 5 clips at 0.1


def test_per_machine_records_the_expected_share_and_the_summary_averages_it():
    from types import SimpleNamespace

    rows = [SimpleNamespace(machine=m, label=lab, score=float(i), anomaly=bool(i % 7 == 0))
            for m in ("a/id_00", "b/id_00") for i, lab in enumerate([0] * 50 + [1] * 50)]
    out = acc.per_machine(rows, {"a/id_00": 20, "b/id_00": 40})
    assert out["a/id_00"][3] == pytest.approx(acc.expected_far_within(20, 50))
    assert out["b/id_00"][3] == pytest.approx(acc.expected_far_within(40, 50))
    assert out["a/id_00"][2] == pytest.approx(8 / 50)  # normals 0, 7, ..., 49 alarm
    assert acc.per_machine(rows)["a/id_00"][3] is None  # no counts (the paper's gamma thresholds)
    base = {m: (0.6, 0.6, None) for m in out}
    summary = acc.summarise({0: {acc.BASELINE: base, DEFAULT: out}})
    assert summary["table"][DEFAULT]["mean"]["far_within_expected"] == pytest.approx(np.mean([out[m][3] for m in out]))
    expected = np.mean([out[m][3] for m in out])  # 0.475 and 0.576
    assert f"| {100 * expected:.0f} % |" in acc.render(summary) and f"calibration clips if the scores were exchangeable: {100 * expected:.0f} %" in acc.render(summary)
