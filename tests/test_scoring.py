import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from sklearn.metrics import roc_auc_score

from mtad.edge_runtime.features import Normalization
from mtad.edge_runtime.scoring import ScoringStats, TypeStats, classification_score, error_vector, mahalanobis
from mtad.train.evaluate import ClipScore, compute_metrics
from mtad.train.stats import fit_scoring_stats, gamma_threshold


def test_mahalanobis_agrees_with_scipy(rng):
    a = rng.standard_normal((200, 6))
    mean = a.mean(axis=0)
    precision = np.linalg.inv(np.cov(a, rowvar=False))
    for x in rng.standard_normal((5, 6)):
        assert mahalanobis(x, mean, precision) == pytest.approx(scipy_mahalanobis(x, mean, precision), rel=1e-12)


def test_per_type_rule_mse_for_valve_slider_mahalanobis_for_others(rng):
    norm = Normalization(np.zeros(4, np.float32), np.ones(4, np.float32))
    residual = rng.standard_normal((4, 50))
    stats = ScoringStats("recon", ["valve/id_00", "fan/id_00"], {
        "valve": TypeStats(norm),
        "fan": TypeStats(norm, recon_mean=np.full(4, 0.5), recon_precision=np.diag([2.0, 1, 1, 1])),
    })
    assert stats.recon_score("valve", residual) == pytest.approx(np.mean(residual**2))
    e = error_vector(residual)
    np.testing.assert_allclose(e, (residual**2).mean(axis=1))
    assert stats.recon_score("fan", residual) == pytest.approx(scipy_mahalanobis(e, np.full(4, 0.5), np.diag([2.0, 1, 1, 1])))


def test_classification_score_is_cross_entropy_of_true_id():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert classification_score(logits, 1) == pytest.approx(-np.log(p[:, 1]).mean())


def test_final_score_and_stats_storage_round_trip(rng, tmp_path):
    norm = Normalization(np.zeros(8, np.float32), np.ones(8, np.float32))
    outputs = [("fan/id_00" if i % 2 else "fan/id_02", rng.standard_normal((8, 30)) * (1 + 0.1 * i % 3), rng.standard_normal((3, 2))) for i in range(40)]
    stats, finals = fit_scoring_stats("multitask", ["fan/id_00", "fan/id_02"], {"fan": norm}, outputs)
    st = stats.types["fan"]
    assert st.final_precision.shape == (2, 2) and st.recon_precision.shape == (8, 8)
    m, r, lg = outputs[0]
    rec, cls = stats.score_pair(m, r, lg)
    assert stats.score(m, r, lg) == pytest.approx(mahalanobis(np.array([rec, cls]), st.final_mean, st.final_precision))
    stats.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:  # no pickled objects inside
        assert "class_map" in z.files
    back = ScoringStats.load(tmp_path / "s.npz")
    assert back.score(m, r, lg) == stats.score(m, r, lg)
    assert back.thresholds == stats.thresholds and set(finals) == {"fan/id_00", "fan/id_02"}


def test_gamma_threshold_gives_target_false_alarm_rate():
    rng = np.random.default_rng(3)
    scores = rng.gamma(4.0, 0.5, size=4000) + 1.0
    thr = gamma_threshold(scores, 0.1)
    far = (scores > thr).mean()
    assert abs(far - 0.1) < 3 * np.sqrt(0.1 * 0.9 / scores.size)  # within sampling error
    thr05 = gamma_threshold(scores, 0.05)
    assert thr05 > thr and abs((scores > thr05).mean() - 0.05) < 3 * np.sqrt(0.05 * 0.95 / scores.size)


def test_auc_pauc_equal_sklearn_on_fixed_example():
    y = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.3, 0.7, 0.85, 0.6]
    scores = [ClipScore(f"c{i}", "fan/id_00", yy, ss, 0, 0, 0.5) for i, (yy, ss) in enumerate(zip(y, s))]
    m = compute_metrics(scores)
    entry = m["machines"][0]
    assert entry["auc"] == pytest.approx(roc_auc_score(y, s)) == pytest.approx(20 / 25)  # pairs ranked right by hand: 5+2+4+5+4
    assert entry["pauc"] == pytest.approx(roc_auc_score(y, s, max_fpr=0.1))
    # decisions at threshold 0.5: TP 4 (0.9, 0.7, 0.85, 0.6), FP 1 (0.8)
    assert entry["precision"] == pytest.approx(0.8) and entry["recall"] == pytest.approx(0.8)
    assert m["types"]["fan"]["auc"] == entry["auc"] and m["mean"]["auc"] == entry["auc"]
