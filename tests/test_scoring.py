import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from sklearn.metrics import roc_auc_score

from mtad.edge_runtime import scoring
from mtad.edge_runtime.features import Normalization
from mtad.edge_runtime.errors import DatasetError
from mtad.edge_runtime.envelope import envelope_dim
from mtad.edge_runtime.errors import BundleError
from mtad.edge_runtime.scoring import (
    ClipEvidence,
    ScoringStats,
    TypeStats,
    classification_score,
    error_vector,
    mahalanobis,
    pooled_calibration,
    spectral_dim,
    spectral_vector,
)
from mtad.train.evaluate import ClipScore, compute_metrics, format_tables
from mtad.train.stats import (
    CROSS_FIT_FOLDS,
    FACTORS,
    NOISE_FLOOR,
    ROWS_PER_FACTOR,
    covariance_rule,
    fit_scoring_stats,
    heldout_distances,
    n_factors,
    shared_gaussian,
)
from mtad.train.stats import gamma_threshold, prediction_threshold, within_id_precision


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


def _evidence(rng, n, machine="fan/id_00", n_mels=32, shift=0.0, scale=1.0):
    """``n`` clips of random evidence: residuals, logits and raw log-mel (an id-specific colour:
    id_02 is 3 dB louder in the lower half of the bins, which a level-free statistic sees; a
    ``shift`` raises that half too)."""
    lower = np.repeat([1.0, 0.0], [n_mels // 2, n_mels - n_mels // 2])[:, None]
    level = {"fan/id_00": 0.0, "fan/id_02": 3.0 * lower}[machine]
    shift = shift * lower
    direction = {"fan/id_00": np.eye(6)[0], "fan/id_02": np.eye(6)[1]}[machine] * 4  # each id's embedding direction
    return [(machine, ClipEvidence(rng.standard_normal((n_mels, 30)) * scale, rng.standard_normal((3, 2)),
                                   level + shift + rng.standard_normal((n_mels, 40)) * scale,
                                   direction + rng.standard_normal((3, 6)) * scale)) for _ in range(n)]


def test_paper_scoring_and_stats_storage_round_trip(rng, tmp_path):
    norm = Normalization(np.zeros(32, np.float32), np.ones(32, np.float32))
    held = _evidence(rng, 20) + _evidence(rng, 20, "fan/id_02")
    stats, finals = fit_scoring_stats("multitask", ["fan/id_00", "fan/id_02"], {"fan": norm}, held, scoring="paper")
    st = stats.types["fan"]
    assert st.final_precision.shape == (2, 2) and st.recon_precision.shape == (32, 32)
    m, ev = held[0]
    rec, cls = stats.score_pair(m, ev.residual, ev.logits)
    assert stats.score(m, ev) == pytest.approx(mahalanobis(np.array([rec, cls]), st.final_mean, st.final_precision))
    stats.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:  # no pickled objects inside
        assert "class_map" in z.files
    back = ScoringStats.load(tmp_path / "s.npz")
    assert back.score(m, ev) == stats.score(m, ev) and back.scoring == "paper"
    assert back.thresholds == stats.thresholds and set(finals) == {"fan/id_00", "fan/id_02"}


def test_fusion_is_per_id_two_sided_and_round_trips(rng, tmp_path):
    norm = Normalization(np.zeros(32, np.float32), np.ones(32, np.float32))
    held = _evidence(rng, 20) + _evidence(rng, 20, "fan/id_02")  # 40 clips for a 40-dim shared covariance
    stats, finals = fit_scoring_stats("multitask", ["fan/id_00", "fan/id_02"], {"fan": norm}, held, components=("recon", "class", "embed", "spectral"))
    # per-id centres, one shared precision per type, a calibration per (component, id)
    assert {k.split("|")[0] for k in stats.centres} == {"recon", "embed", "spectral"}
    assert {k.split("|")[0] for k in stats.precisions} == {"recon", "spectral"}  # embed: cosine distance, no covariance
    np.testing.assert_allclose(stats.centres["embed|fan/id_02"] @ np.eye(6)[1], 1.0, atol=0.05)
    # 8 bands of mean first, relative to the clip's level: +1.5 dB below the middle, -1.5 above
    np.testing.assert_allclose(stats.centres["spectral|fan/id_02"][:8], np.repeat([1.5, -1.5], 4), atol=0.2)
    assert stats.precisions["spectral|fan"].shape == (spectral_dim(32),) * 2 == (40, 40)  # mean, std, change (8 each), modulation (4 x 4)
    assert stats.precisions["recon|fan"].shape == (4, 4)
    # standardised on held-out normals: their out-of-sample fused scores centre near 0
    assert abs(np.mean(finals["fan/id_00"])) < 0.5
    assert stats.calibration["recon|fan/id_00"][1] == stats.calibration["recon|fan/id_02"][1]  # std pooled over the type
    normal = stats.score("fan/id_00", _evidence(rng, 1)[0][1])
    louder = stats.score("fan/id_00", _evidence(rng, 1, scale=1.6)[0][1])
    quieter = stats.score("fan/id_00", _evidence(rng, 1, scale=0.5)[0][1])  # errors that fall count too
    assert louder > normal + 2 and quieter > normal + 2
    # the other id's normal level is an anomaly for this id
    assert stats.score("fan/id_00", _evidence(rng, 1, "fan/id_02")[0][1]) > stats.threshold("fan/id_00") + 2
    stats.save(tmp_path / "s.npz")
    back = ScoringStats.load(tmp_path / "s.npz")
    ev = held[3][1]
    assert back.score_parts("fan/id_00", ev) == stats.score_parts("fan/id_00", ev)
    assert back.components == ("recon", "class", "embed", "spectral") and back.scoring == "fusion"
    other = _evidence(rng, 1, "fan/id_02")[0][1]
    assert stats.component_score("embed", "fan/id_00", other) > 0.5 > stats.component_score("embed", "fan/id_00", held[0][1])


def test_acoustic_is_one_distance_over_spectral_and_envelope_and_weighs_as_two(rng, tmp_path):
    norm = Normalization(np.zeros(32, np.float32), np.ones(32, np.float32))
    held = _evidence(rng, 40) + _evidence(rng, 40, "fan/id_02")
    for _, ev in held:
        ev.envelope = rng.standard_normal(envelope_dim())
    stats, finals = fit_scoring_stats("multitask", ["fan/id_00", "fan/id_02"], {"fan": norm}, held, components=("recon", "acoustic"))
    assert stats.needs_envelope
    dim = spectral_dim(32) + envelope_dim()
    assert stats.precisions["acoustic|fan"].shape == (dim, dim)
    rows = [np.concatenate([spectral_vector(ev.logmel), ev.envelope]) for m, ev in held if m == "fan/id_00"]
    np.testing.assert_allclose(stats.centres["acoustic|fan/id_00"], np.mean(rows, axis=0))
    m, ev = _evidence(rng, 1)[0]
    ev.envelope = rng.standard_normal(envelope_dim())
    parts = stats.score_parts(m, ev)
    x = np.concatenate([spectral_vector(ev.logmel), ev.envelope])
    assert parts.components["acoustic"] == pytest.approx(mahalanobis(x, stats.centres["acoustic|fan/id_00"], stats.precisions["acoustic|fan"]))
    z = {c: stats.standardise(c, m, parts.components[c]) for c in ("recon", "acoustic")}
    assert parts.score == pytest.approx((z["recon"] + 2 * z["acoustic"]) / 3)  # acoustic weighs as the two statistics it holds
    # an envelope far from the id's normals moves the score, the log-mel unchanged
    ev.envelope = ev.envelope + 3.0
    assert stats.score(m, ev) > parts.score + 2
    stats.save(tmp_path / "s.npz")
    back = ScoringStats.load(tmp_path / "s.npz", n_mels=32)
    assert back.score_parts(m, ev) == stats.score_parts(m, ev) and back.components == ("recon", "acoustic")
    assert back.weights == stats.weights == (1.0, 2.0)  # stored with the statistics, not read from the runtime's constants
    with pytest.raises(BundleError, match="acoustic score needs"):
        stats.score(m, ClipEvidence(ev.residual, ev.logits, ev.logmel))


def test_calibration_std_is_pooled_over_the_ids_of_a_type():
    e = np.exp(1.0)
    raw = {"fan/id_00": np.array([1.0, e, e * e]), "fan/id_02": np.array([e, e]), "pump/id_00": np.array([1.0, e**4])}
    cal = pooled_calibration(raw)  # log scores: 0, 1, 2 | 1, 1 | 0, 4
    np.testing.assert_allclose(cal["fan/id_00"], [1.0, np.sqrt(2 / 3)], atol=1e-5)  # squares 2 + 0 over 5 - 2 dof
    np.testing.assert_allclose(cal["fan/id_02"], [1.0, np.sqrt(2 / 3)], atol=1e-5)
    np.testing.assert_allclose(cal["pump/id_00"], [2.0, np.sqrt(8)], atol=1e-5)  # one id: its own std


def test_fusion_refuses_too_few_heldout_clips_and_wrong_components(rng):
    norm = Normalization(np.zeros(8, np.float32), np.ones(8, np.float32))
    with pytest.raises(DatasetError, match="fan/id_00 has 3.*need >= 4"):
        fit_scoring_stats("multitask", ["fan/id_00"], {"fan": norm}, _evidence(rng, 3))
    with pytest.raises(DatasetError, match="not available for a recon model"):
        fit_scoring_stats("recon", ["fan/id_00"], {"fan": norm}, _evidence(rng, 8), components=("class",))


def test_heldout_thresholds_give_target_false_alarm_rate_on_other_unseen_normals():
    """Thresholds set on 10 held-out normals per id: the false-alarm rate on *new* normals of the
    same ids equals the 0.1 target within sampling error, averaged over independent fits. The
    paper's way (gamma fit on the fitting clips' own in-sample scores) overshoots."""
    rng = np.random.default_rng(0)
    norm = Normalization(np.zeros(8, np.float32), np.ones(8, np.float32))
    fars, fars_insample = [], []
    for _ in range(30):
        held = _evidence(rng, 10) + _evidence(rng, 10, "fan/id_02")
        stats, _ = fit_scoring_stats("multitask", ["fan/id_00", "fan/id_02"], {"fan": norm}, held, components=("spectral",))
        new = _evidence(rng, 200)
        scores = np.array([stats.score(m, ev) for m, ev in new])
        fars.append(np.mean(scores > stats.threshold("fan/id_00")))
        insample = np.array([stats.component_score("spectral", m, ev) for m, ev in held[:10]])
        raw_new = np.array([stats.component_score("spectral", m, ev) for m, ev in new])
        fars_insample.append(np.mean(raw_new > gamma_threshold(insample, 0.1)))
    se = np.std(fars, ddof=1) / np.sqrt(len(fars))
    assert abs(np.mean(fars) - 0.1) < max(3 * se, 0.02), (np.mean(fars), se)
    assert np.mean(fars_insample) > 0.2  # what in-sample thresholds did (issue #10, cause 1)


def test_model_free_thresholds_rest_on_every_training_normal_out_of_sample():
    """With no model output in the score, the clips the model trained on are as unseen to the
    statistics as the held-out ones: all 40 an id get a leave-one-out score and set the threshold.
    The false-alarm rate on new normals still averages to the target, and it varies from fit to fit
    (from id to id in practice) about half as much as with the 10 held-out clips a score with the
    model's ``recon`` must use (rank 37 of 40 against 10 of 10: a standard deviation of 0.05 against 0.08)."""
    rng = np.random.default_rng(1)
    norm = Normalization(np.zeros(32, np.float32), np.ones(32, np.float32))
    fars = {("spectral",): [], ("recon", "spectral"): []}
    for _ in range(20):
        held = _evidence(rng, 10) + _evidence(rng, 10, "fan/id_02")
        extra = _evidence(rng, 30) + _evidence(rng, 30, "fan/id_02")
        new = _evidence(rng, 150)
        for comps, rates in fars.items():
            stats, finals = fit_scoring_stats("multitask", ["fan/id_00", "fan/id_02"], {"fan": norm}, held, components=comps,
                                              extra_normals=extra)
            assert len(finals["fan/id_00"]) == (40 if comps == ("spectral",) else 10)
            rates.append(np.mean(np.array([stats.score(m, ev) for m, ev in new]) > stats.threshold("fan/id_00")))
    free, with_model = np.array(fars[("spectral",)]), np.array(fars[("recon", "spectral")])
    assert abs(free.mean() - 0.1) < 3 * free.std(ddof=1) / np.sqrt(free.size), free.mean()
    assert free.std(ddof=1) < 0.8 * with_model.std(ddof=1), (free.std(ddof=1), with_model.std(ddof=1))


def test_prediction_threshold_matches_t_quantile():
    s = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    from scipy import stats as sstats

    assert prediction_threshold(s, 0.1) == pytest.approx(2.0 + np.std(s, ddof=1) * np.sqrt(1.2) * sstats.t.ppf(0.9, 4))


def test_conformal_threshold_is_the_kth_order_statistic_and_falls_back_when_too_few():
    from mtad.edge_runtime.scoring import conformal_rank

    s = np.arange(19, dtype=float)[::-1]  # n = 19, far 0.1: k = ceil(20 * 0.9) = 18
    assert conformal_rank(19, 0.1) == 18 and prediction_threshold(s, 0.1) == 17.0
    assert conformal_rank(10, 0.1) == 10 and conformal_rank(8, 0.1) is None  # 8 clips cannot bound a 0.1 rate


def test_conformal_threshold_holds_the_rate_on_skewed_scores_where_a_gaussian_bound_overshoots():
    """Right-skewed scores (log-normal, as log-distances of few clips can be): the k-th order
    statistic of 10 unseen normals keeps a new normal's exceedance at (n+1-k)/(n+1) = 1/11; the
    Gaussian prediction bound it replaced lets through clearly more than the 0.1 target."""
    from scipy import stats as sstats

    rng = np.random.default_rng(11)
    conformal, gaussian = [], []
    for _ in range(600):
        held, new = rng.lognormal(0, 1, 10), rng.lognormal(0, 1, 400)
        conformal.append(np.mean(new > prediction_threshold(held, 0.1)))
        gauss = held.mean() + held.std(ddof=1) * np.sqrt(1.1) * sstats.t.ppf(0.9, 9)
        gaussian.append(np.mean(new > gauss))
    se = np.std(conformal, ddof=1) / np.sqrt(len(conformal))
    assert abs(np.mean(conformal) - 1 / 11) < 3 * se, (np.mean(conformal), se)
    assert np.mean(gaussian) > 0.1 + 5 * se, np.mean(gaussian)


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
    scores = [ClipScore(f"c{i}", "fan/id_00", yy, ss, 0.5) for i, (yy, ss) in enumerate(zip(y, s))]
    m = compute_metrics(scores)
    entry = m["machines"][0]
    assert entry["auc"] == pytest.approx(roc_auc_score(y, s)) == pytest.approx(20 / 25)  # pairs ranked right by hand: 5+2+4+5+4
    assert entry["pauc"] == pytest.approx(roc_auc_score(y, s, max_fpr=0.1))
    # decisions at threshold 0.5: TP 4 (0.9, 0.7, 0.85, 0.6), FP 1 (0.8)
    assert entry["precision"] == pytest.approx(0.8) and entry["recall"] == pytest.approx(0.8)
    assert (entry["tp"], entry["fp"], entry["tn"], entry["fn"]) == (4, 1, 4, 1) and entry["false_alarm_rate"] == pytest.approx(0.2)
    assert m["types"]["fan"]["auc"] == entry["auc"] and m["mean"]["auc"] == entry["auc"]


def test_spectral_vector_in_chunks_equals_whole_clip(rng):
    from mtad.edge_runtime.scoring import SpectralStats, spectral_dim, spectral_vector

    x = rng.standard_normal((128, 700)) * 3 - 20
    x[100:] -= 75  # quiet top bins, partly under each frame's relative floor (SPECTRAL_TOP_DB)
    whole = spectral_vector(x)
    assert whole.shape == (spectral_dim(128),) == (160,)
    acc = SpectralStats(128)
    for i in range(0, 700, 97):  # uneven chunks, as the block-by-block scorer feeds them
        acc.add(x[:, i : i + 97])
    np.testing.assert_allclose(acc.vector(), whole, rtol=0, atol=1e-9)


def test_spectral_statistic_follows_a_turn_down_past_the_front_ends_fixed_floor(rng):
    """A 16-bit file's top bins, emptied by an anti-alias filter, hold quantisation noise at the
    front end's fixed -80 dB floor. Turned down 6 dB, that noise goes under the fixed floor and
    stays put, so relative to the clip it seems to rise. Each frame floored 80 dB below its
    loudest bin (bundle schema 8) follows the turn-down exactly; the fixed floor alone does not."""
    from mtad.edge_runtime import scoring

    sound = rng.standard_normal((128, 300)) * 4 + np.linspace(15, -30, 128)[:, None]  # each frame's loudest bin about +20 dB
    sound[110:] = -84 + 2 * rng.standard_normal((18, 300))  # quantisation noise about the fixed floor
    front_end = lambda gain_db: np.maximum(sound + gain_db, -80.0)  # noqa: E731  (what the log-mel front end outputs)
    loud, quiet = front_end(0.0), front_end(-6.0)
    assert scoring.SPECTRAL_TOP_DB == 80.0
    np.testing.assert_allclose(scoring.spectral_vector(quiet), scoring.spectral_vector(loud), rtol=0, atol=1e-5)  # the modulation part is kept in float32
    scoring.SPECTRAL_TOP_DB = None
    try:
        moved = scoring.spectral_vector(quiet) - scoring.spectral_vector(loud)
    finally:
        scoring.SPECTRAL_TOP_DB = 80.0
    bands = 128 // scoring.SPECTRAL_BAND
    assert moved[bands - 1] > 4  # the top band's mean, relative to the clip's level: up by most of the 6 dB


def test_spectral_vector_sees_what_mean_and_std_miss(rng):
    """A 3 Hz swell in one band, or knocks every 6 frames, barely moves the band's mean and std;
    the modulation and frame-to-frame parts of the statistic move by orders of magnitude."""
    from mtad.edge_runtime.scoring import FRAME_RATE, SPECTRAL_BAND, spectral_vector

    t = np.arange(626)
    x = np.tile(rng.standard_normal((128, 1)), (1, t.size)) + 0.05 * rng.standard_normal((128, t.size))
    swell = x.copy()
    swell[40:48] += np.sin(2 * np.pi * 3.0 * t / FRAME_RATE)  # mel bins 40-47 = modulation band 5
    base, moved = spectral_vector(x), spectral_vector(swell)
    bands = 128 // SPECTRAL_BAND
    mod = (moved - base)[3 * bands :].reshape(16, 4)  # (modulation band, range): 0.5-2, 2-4, 4-8, 8-15.6 Hz
    assert mod[5, 1] > np.log(100)  # the 2-4 Hz power of that band
    assert np.abs(np.delete(mod, 5, axis=0)).max() < 1e-9  # no other band moves
    assert abs((moved - base)[10]) < 1e-9  # band 10's mean (bins 40-43): a sine averages out

    knocks = x.copy()
    knocks[64:72, ::6] += 2.0
    d = spectral_vector(knocks) - base
    assert d[2 * bands + 16] > np.log(5)  # frame-to-frame change of band 16 (bins 64-67)


def test_acoustic_dilutes_a_fault_in_one_statistic_less_than_the_mean_of_two_scores():
    """A fault that moves the spectral statistic and not the envelope: one joint distance keeps
    more of it than the mean of the two standardised scores (the default's reason for it). The
    combination rule is the subject, so the covariance is Ledoit-Wolf's throughout: on these
    isotropic noise features the factor model's 16 spurious factors would blur the comparison."""
    rng = np.random.default_rng(3)
    norm = Normalization(np.zeros(32, np.float32), np.ones(32, np.float32))

    def clips(n, machine, shift=0.0):
        out = _evidence(rng, n, machine, shift=shift)
        for _, ev in out:  # spread like the spectral numbers here, as the two are alike in real clips (README)
            ev.envelope = 0.1 * rng.standard_normal(envelope_dim())
        return out

    held = clips(40, "fan/id_00") + clips(40, "fan/id_02")
    normal, faulty = clips(200, "fan/id_00"), clips(200, "fan/id_00", shift=0.5)  # +-0.25 dB about the level
    y = np.r_[np.zeros(len(normal)), np.ones(len(faulty))]
    auc = {}
    for comps in (("spectral",), ("spectral", "envelope"), ("acoustic",)):
        stats, _ = fit_scoring_stats("multitask", ["fan/id_00", "fan/id_02"], {"fan": norm}, held, components=comps, covariance="ledoit-wolf")
        auc[comps] = roc_auc_score(y, [stats.score(m, ev) for m, ev in normal + faulty])
    assert auc[("spectral",)] > 0.8
    assert auc[("acoustic",)] > auc[("spectral",)] - 0.02 and auc[("acoustic",)] > auc[("spectral", "envelope")] + 0.08, auc


def test_factor_covariance_beats_ledoit_wolf_on_few_clips_with_unequal_variances():
    """120 within-id deviations in 244 dimensions (3 ids x 40 clips, the acoustic statistic), with
    what clip statistics have: feature variances spread over two orders of magnitude, and a few
    directions (background level and colour) shared by every feature. Ledoit-Wolf's small
    shrinkage leaves the directions 120 rows do not span with almost no variance, and noise there
    swamps a shift in the quiet features; the factor model comes near the true covariance.
    Measured AUC: factor 0.845, Ledoit-Wolf 0.512, true covariance 0.882."""
    rng = np.random.default_rng(0)
    d, rank = 244, 8
    scale = np.exp(rng.uniform(np.log(0.05), np.log(1.0), d))
    loadings = rng.standard_normal((rank, d)) * 0.5

    def draw(n):
        return (rng.standard_normal((n, rank)) @ loadings + rng.standard_normal((n, d))) * scale

    train = draw(120)
    train -= train.mean(axis=0)
    normal, faulty = draw(300), draw(300)
    quiet = np.argsort(scale)[:40]
    faulty[:, quiet] += scale[quiet]  # one noise standard deviation in the 40 quietest features
    x, y = np.concatenate([normal, faulty]), np.r_[np.zeros(300), np.ones(300)]
    true_precision = np.linalg.inv((loadings.T @ loadings + np.eye(d)) * np.outer(scale, scale))
    auc = {"oracle": roc_auc_score(y, np.einsum("ij,jk,ik->i", x, true_precision, x))}
    for cov in ("factor", "ledoit-wolf"):
        precision, noise = within_id_precision(train, cov)
        assert (noise is not None) == (cov == "factor")
        auc[cov] = roc_auc_score(y, np.einsum("ij,jk,ik->i", x, precision, x))
    assert auc["factor"] > 0.8 and auc["factor"] > auc["ledoit-wolf"] + 0.2 and auc["factor"] > auc["oracle"] - 0.06, auc


def test_factor_covariance_needs_enough_rows_and_dimensions_and_floors_its_variances(rng):
    assert covariance_rule(FACTORS * ROWS_PER_FACTOR, 2 * FACTORS + 1) == "factor"
    assert covariance_rule(FACTORS * ROWS_PER_FACTOR - 1, 244) == "ledoit-wolf"  # e.g. MIMII fan: 15 clips
    assert covariance_rule(500, 2 * FACTORS) == "ledoit-wolf"  # e.g. the 16 recon bands
    assert covariance_rule(500, 244, "ledoit-wolf") == "ledoit-wolf"
    # more factors as the clips allow: the default set's 120 deviations a type get 16
    assert [n_factors(n, 244) for n in (64, 120, 300, 600, 10_000)] == [16, 16, 37, 61, 61]
    assert n_factors(600, 84) == 21 and n_factors(10_000, 1000) == 64 and n_factors(600, 40) == 16
    with pytest.raises(ValueError, match="covariance must be one of"):
        covariance_rule(500, 244, "graphical-lasso")
    x = rng.standard_normal((120, 60))
    x[:, 7] = 0.0  # a band no training clip ever filled
    precision, noise = within_id_precision(x, "factor")
    floor = NOISE_FLOOR * x.var(axis=0).mean()
    assert noise.min() == pytest.approx(floor) and np.all(np.isfinite(precision))
    assert precision[7, 7] == pytest.approx(1 / floor, rel=1e-6)  # not 1e12, sklearn's own floor


def test_covariance_rule_is_recorded_and_selectable(rng, tmp_path):
    norm = Normalization(np.zeros(32, np.float32), np.ones(32, np.float32))
    held = _evidence(rng, 40) + _evidence(rng, 40, "fan/id_02")
    for _, ev in held:
        ev.envelope = rng.standard_normal(envelope_dim())
    fits = {cov: fit_scoring_stats("multitask", ["fan/id_00", "fan/id_02"], {"fan": norm}, held, components=("acoustic",), covariance=cov)[0]
            for cov in ("factor", "ledoit-wolf")}
    dev = np.concatenate([np.stack([np.concatenate([spectral_vector(ev.logmel), ev.envelope]) for mm, ev in held if mm == m])
                          for m in ("fan/id_00", "fan/id_02")])
    dev = dev.reshape(2, 40, -1) - dev.reshape(2, 40, -1).mean(axis=1, keepdims=True)
    np.testing.assert_allclose(fits["ledoit-wolf"].precisions["acoustic|fan"], within_id_precision(dev.reshape(80, -1), "ledoit-wolf")[0])
    assert not np.allclose(fits["factor"].precisions["acoustic|fan"], fits["ledoit-wolf"].precisions["acoustic|fan"])
    fits["factor"].save(tmp_path / "s.npz")
    assert ScoringStats.load(tmp_path / "s.npz").covariance == "factor"
    arrays = dict(np.load(tmp_path / "s.npz"))
    arrays["covariance"] = np.array("graphical-lasso")
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(BundleError, match="covariance: 'graphical-lasso' is not one of factor, ledoit-wolf"):
        ScoringStats.load(tmp_path / "bad.npz")


def test_heldout_distances_leave_one_out_then_cross_fit_beyond_the_fold_count(rng):
    """Up to CROSS_FIT_FOLDS held rows in a type each is scored by a fit without it; beyond, by a
    fit without its fold. Either way a row never scores against a fit that saw it."""
    def check(n_per_id):
        vectors = {m: rng.standard_normal((n_per_id, 5)) + k for k, m in enumerate(("fan/id_00", "fan/id_02"))}
        fixed = {"fan/id_00": rng.standard_normal((6, 5))}
        out = heldout_distances(vectors, fixed, "ledoit-wolf")
        rows = [(m, i) for m, v in vectors.items() for i in range(len(v))]
        folds = min(len(rows), CROSS_FIT_FOLDS)
        for j in (0, len(rows) - 1):  # the first and last row, recomputed by hand
            m, i = rows[j]
            drop = {mm: [ii for jj, (m2, ii) in enumerate(rows) if jj % folds == j % folds and m2 == mm] for mm in vectors}
            assert i in drop[m] and sum(map(len, drop.values())) in ((1,) if len(rows) <= CROSS_FIT_FOLDS else (2, 3))
            fit = {mm: np.concatenate([np.delete(v, drop[mm], axis=0), fixed.get(mm, v[:0])]) for mm, v in vectors.items()}
            g = shared_gaussian(fit, "ledoit-wolf")
            assert out[m][i] == pytest.approx(mahalanobis(vectors[m][i], g.centres[m], g.precision))
        insample = shared_gaussian({m: np.concatenate([v, fixed.get(m, v[:0])]) for m, v in vectors.items()}, "ledoit-wolf")
        inside = np.concatenate([[mahalanobis(x, insample.centres[m], insample.precision) for x in v] for m, v in vectors.items()])
        assert np.mean(np.concatenate(list(out.values()))) > np.mean(inside)  # out of sample: farther than in-sample
    check(10)  # 20 rows: leave one out
    check(40)  # 80 rows: 32 folds of 2-3 rows


def test_heldout_refits_keep_the_full_fits_covariance_rule(rng):
    """64 rows fit a factor model; each refit without a fold has 62, which alone would fall back
    to Ledoit-Wolf. The held-out scores must come from the estimator that scores new clips."""
    vectors = {m: rng.standard_normal((32, 40)) for m in ("fan/id_00", "fan/id_02")}
    rule = covariance_rule(64, 40)
    full = shared_gaussian(vectors, rule)
    assert rule == "factor" and full.noise_variance is not None
    out = heldout_distances(vectors, {}, rule, full.noise_variance)
    fit = {m: v[1:] for m, v in vectors.items()}  # fold 0 holds row 0 of each id (rows 0 and 32 of the 64)
    g = shared_gaussian(fit, "factor", full.noise_variance)
    assert out["fan/id_00"][0] == pytest.approx(mahalanobis(vectors["fan/id_00"][0], g.centres["fan/id_00"], g.precision))
    lw = shared_gaussian(fit, "ledoit-wolf")
    assert out["fan/id_00"][0] != pytest.approx(mahalanobis(vectors["fan/id_00"][0], lw.centres["fan/id_00"], lw.precision), rel=1e-3)
    # the factor count is the full fit's too: 200 rows in 100 dimensions give 25, a refit's 193 rows alone 24
    vectors = {m: rng.standard_normal((100, 100)) for m in ("fan/id_00", "fan/id_02")}
    full = shared_gaussian(vectors, "factor")
    assert full.factors == n_factors(200, 100) == 25 and n_factors(193, 100) == 24
    out = heldout_distances(vectors, {}, "factor", full.noise_variance, full.factors)
    left = [j for j in range(200) if j % CROSS_FIT_FOLDS == 0]  # fold 0: rows 0, 32, 64, 96 of id_00, then 28, 60, 92 of id_02
    fit = {m: np.delete(v, [j - 100 * k for j in left if 100 * k <= j < 100 * (k + 1)], axis=0) for k, (m, v) in enumerate(vectors.items())}
    g = shared_gaussian(fit, "factor", full.noise_variance, 25)
    assert out["fan/id_00"][0] == pytest.approx(mahalanobis(vectors["fan/id_00"][0], g.centres["fan/id_00"], g.precision))
    with pytest.raises(ValueError, match="needs another row"):
        heldout_distances({"fan/id_00": vectors["fan/id_00"][:1], "fan/id_02": vectors["fan/id_02"]}, {}, "ledoit-wolf")


def test_threshold_far_range_is_the_spread_of_conformal_thresholds_over_ids():
    """The false-alarm rate a conformal threshold from n normals gives new normals, over many ids:
    its central 80 % equals the Beta(n + 1 - k, k) range, whatever the scores' distribution."""
    from scipy.stats import norm

    rng = np.random.default_rng(1)
    for n in (10, 20, 40):
        k = scoring.conformal_rank(n, 0.1)
        thresholds = np.sort(rng.standard_normal((40000, n)), axis=1)[:, k - 1]
        true_rate = norm.sf(thresholds)  # each simulated id's rate on new normals
        lo, hi = scoring.threshold_far_range(n, 0.1)
        assert np.quantile(true_rate, [0.1, 0.9]) == pytest.approx([lo, hi], abs=0.004), n
    assert scoring.threshold_far_range(20, 0.1) == pytest.approx((0.0269, 0.1810), abs=1e-4)
    assert scoring.threshold_far_range(8, 0.1) is None  # no conformal rank: the Gaussian fallback promises no range


def test_clips_for_far_range_is_where_the_range_stays_within_the_tolerance():
    need = scoring.clips_for_far_range(0.1)
    assert need == 69
    for n in range(need, 400):
        lo, hi = scoring.threshold_far_range(n, 0.1)
        assert 0.05 - 1e-9 <= lo and hi <= 0.15 + 1e-9, n
    lo, hi = scoring.threshold_far_range(need - 1, 0.1)
    assert lo < 0.05 or hi > 0.15  # 68 misses (the conformal rank rounds)
    assert scoring.clips_for_far_range(0.1, tolerance=0.001, limit=500) is None
    text = scoring.describe_threshold_ranges({"fan/id_00": 20, "fan/id_02": 40}, 0.1)
    assert "from 20-40 out-of-sample normals an id" in text and "0.03-0.18 (20 normals) to 0.04-0.16 (40 normals)" in text
    assert text.endswith("about 69 an id keep it within +-0.05")
    assert scoring.describe_threshold_ranges({"fan/id_00": 200}, 0.1).endswith("lies in 0.07-0.13 (target 0.1)")


def test_false_alarm_rate_range_is_the_chance_spread_of_a_measured_rate():
    """Thresholds from 20 exchangeable normals, judged on 50 more: the measured rate's central 99 %
    is the beta-binomial range (simulated here), and a machine beyond it is reported."""
    rng = np.random.default_rng(2)
    k = scoring.conformal_rank(20, 0.1)
    draws = rng.standard_normal((100000, 70))
    rate = (draws[:, 20:] > np.sort(draws[:, :20], axis=1)[:, k - 1 : k]).mean(axis=1)
    lo, hi = scoring.false_alarm_rate_range(20, 50, 0.1)
    assert (lo, hi) == pytest.approx((0.0, 0.36))
    assert np.mean(rate > hi) < 0.005 + 0.001 and np.mean(rate >= hi - 0.02) > 0.005  # hi is the 99.5 % point, to one count
    assert scoring.false_alarm_rate_range(4, 50, 0.1) is None  # no conformal rank: no range

    def machine(name, flagged):  # 50 normals (the first `flagged` above the threshold 1.0), 10 anomalies
        return [ClipScore(f"{name}{i}", name, 0, 2.0 if i < flagged else 0.0, 1.0) for i in range(50)] + \
               [ClipScore(f"{name}a{i}", name, 1, 3.0, 1.0) for i in range(10)]

    scores = machine("fan/id_00", 5) + machine("fan/id_02", 30)
    m = compute_metrics(scores, threshold_clips={"fan/id_00": 20, "fan/id_02": 20}, false_alarm_rate=0.1)
    ok, shifted = m["machines"]
    assert ok["false_alarm_explained"] and ok["threshold_clips"] == 20 and ok["false_alarm_chance_range"] == pytest.approx([0.0, 0.36])
    assert not shifted["false_alarm_explained"] and shifted["false_alarm_rate"] == pytest.approx(0.6)
    assert m["mean"]["false_alarm_unexplained"] == ["fan/id_02"]
    text = format_tables(m)
    assert "fan/id_02: false-alarm rate 0.60 on 50 normals is beyond the 0.00-0.36 that chance gives a threshold from 20 normals" in text
    assert "fan/id_00: false-alarm rate" not in text
    plain = compute_metrics(scores)  # no clip counts (older runs, the paper's scoring): nothing claimed
    assert "false_alarm_explained" not in plain["machines"][0] and plain["mean"]["false_alarm_unexplained"] is None
