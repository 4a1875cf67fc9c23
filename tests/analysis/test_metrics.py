"""Automated metrics checked against reference formulas written here, scikit-image, sklearn and scipy."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import scipy.stats
import torch
from PIL import Image
from sklearn.metrics.pairwise import polynomial_kernel as sk_polynomial_kernel

from analysis.features import load_images
from analysis.features.tiny import tiny_clip, tiny_dinov2
from analysis.metrics import (
    FrechetDistance,
    _compute_fd,
    alignment_metric,
    bootstrap_ci,
    cmmd,
    compare_models,
    diversity_by_group,
    equalize_n,
    fd_metric,
    fd_score,
    feature_stats,
    frechet_distance,
    human_metric_correlation,
    kid,
    kid_metric,
    mean_pairwise_distance,
    medvqa_gi_scores,
    metrics_report_section,
    metrics_tables,
    ms_ssim,
    ms_ssim_diversity,
    ssim,
)

torch.set_num_threads(1)


def fd_sqrtm_reference(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """The textbook formula (Heusel et al. 2017; pytorch-fid) with scipy.linalg.sqrtm."""
    covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.05 * np.eye(d)


def two_sets(n: int, d: int, seed: int = 0, shift: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d))
    b = rng.normal(size=(n, d)) @ rng.normal(scale=0.3, size=(d, d)) + shift
    return a, b


# ------------------------------------------------------------------------------------------------ FD


@pytest.mark.parametrize("d", [64, 128, 256])
def test_fd_matches_sqrtm_formula_on_random_spd(d: int) -> None:
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_spd(d, rng), random_spd(d, rng)
    expected = fd_sqrtm_reference(mu1, s1, mu2, s2)
    assert _compute_fd(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("n", "d"), [(400, 64), (80, 64)])
def test_frechet_distance_from_features_matches_sqrtm(n: int, d: int) -> None:
    a, b = two_sets(n, d)
    expected = fd_sqrtm_reference(*feature_stats(a), *feature_stats(b))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n=80 > d is fine; keep the test independent of the N<dim warning
        assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_fd_2048d_matches_closed_form_for_commuting_covariances() -> None:
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute: FD = |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    d = 2048
    rng = np.random.default_rng(7)
    q = torch.linalg.qr(torch.from_numpy(rng.normal(size=(d, d))))[0].numpy()
    ev1, ev2 = rng.uniform(0.01, 2.0, d), rng.uniform(0.01, 2.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = (mu1 - mu2) @ (mu1 - mu2) + np.sum((np.sqrt(ev1) - np.sqrt(ev2)) ** 2)
    got = _compute_fd(mu1, (q * ev1) @ q.T, mu2, (q * ev2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-6)


def test_fd_of_identical_sets_is_zero_and_symmetric() -> None:
    a, b = two_sets(300, 32)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert frechet_distance(a, b) > 1.0


def test_fd_warns_when_n_is_below_the_dimension() -> None:
    a, b = two_sets(20, 32)
    with pytest.warns(UserWarning, match="smaller than the feature dimension 32"):
        frechet_distance(a, b)
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(a, b[:, :16])


def test_stateful_frechet_distance_equals_functional() -> None:
    a, b = two_sets(150, 24)
    metric = FrechetDistance(dim=24)
    for chunk in np.array_split(a, 4):
        metric.update(chunk, real=True)
    for chunk in np.array_split(b, 3):
        metric.update(torch.from_numpy(chunk), real=False)
    assert metric.n == {"real": 150, "generated": 150}
    assert metric.compute() == pytest.approx(frechet_distance(a, b), rel=1e-9)
    metric.reset()
    with pytest.raises(ValueError, match="at least 2"):
        metric.compute()


# ----------------------------------------------------------------------------------------------- KID


def kid_reference(a: np.ndarray, b: np.ndarray, n_subsets: int, m: int, seed: int) -> tuple[float, float]:
    """Unbiased MMD^2 with explicit sums over i != j, same subset draws as the implementation."""
    rng = np.random.default_rng(seed)
    d = a.shape[1]
    values = []
    for _ in range(n_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = sk_polynomial_kernel(x, x, degree=3, gamma=1.0 / d, coef0=1.0)
        kyy = sk_polynomial_kernel(y, y, degree=3, gamma=1.0 / d, coef0=1.0)
        kxy = sk_polynomial_kernel(x, y, degree=3, gamma=1.0 / d, coef0=1.0)
        off = ~np.eye(m, dtype=bool)
        values.append(kxx[off].sum() / (m * (m - 1)) + kyy[off].sum() / (m * (m - 1)) - 2 * kxy.sum() / m**2)
    return float(np.mean(values)), float(np.std(values))


def test_kid_matches_reference_and_is_seeded() -> None:
    a, b = two_sets(120, 16, shift=0.1)
    result = kid(a, b, n_subsets=7, subset_size=50, seed=3)
    ref_mean, ref_std = kid_reference(a, b, 7, 50, 3)
    assert result.mean == pytest.approx(ref_mean, rel=1e-10)
    assert result.std == pytest.approx(ref_std, rel=1e-10)
    assert kid(a, b, n_subsets=7, subset_size=50, seed=3) == result
    assert kid(a, b, n_subsets=7, subset_size=50, seed=4).mean != result.mean


def test_kid_subset_never_larger_than_n_and_near_zero_for_same_distribution() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 8)), rng.normal(size=(80, 8))
    with pytest.warns(UserWarning, match="using 60"):
        result = kid(a, b, n_subsets=20, subset_size=1000)
    assert result.subset_size == 60
    assert abs(result.mean) < 3 * result.std + 1e-3  # unbiased: centred on 0 for equal distributions


# ---------------------------------------------------------------------------------------------- CMMD


def test_cmmd_matches_direct_formula() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 6)) * 4
    y = rng.normal(size=(9, 6)) * 4 + 2

    def k(p: np.ndarray, q: np.ndarray) -> float:
        return float(np.exp(-np.sum((p - q) ** 2) / (2 * 10.0**2)))

    kxx = np.mean([[k(p, q) for q in x] for p in x])
    kyy = np.mean([[k(p, q) for q in y] for p in y])
    kxy = np.mean([[k(p, q) for q in y] for p in x])
    assert cmmd(x, y) == pytest.approx(1000 * (kxx + kyy - 2 * kxy), rel=1e-10)
    assert cmmd(x, x) == pytest.approx(0.0, abs=1e-9)


# ------------------------------------------------------------------------------------------ diversity


def test_mean_pairwise_distance_and_groups() -> None:
    x = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0], [1.0, 0.0]])
    assert mean_pairwise_distance(x[:3]) == pytest.approx((5 + 10 + 5) / 3)
    assert mean_pairwise_distance(x[[1, 3]], "cosine") == pytest.approx(1 - 3 / 5)
    table = diversity_by_group(x, ["p1", "p1", "p1", "p2"])
    assert table.set_index("group")["diversity"]["p1"] == pytest.approx(20 / 3)
    assert np.isnan(table.set_index("group")["diversity"]["p2"])
    assert table.set_index("group")["n"].to_dict() == {"p1": 3, "p2": 1}


# ------------------------------------------------------------------------------------------ (MS-)SSIM


@pytest.fixture(scope="module")
def gi_pair(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    paths = sorted((shared_data / "gi").glob("*.jpg"))[:2]
    a, b = (np.asarray(im.resize((192, 192), Image.Resampling.BICUBIC)) for im in load_images(paths))
    return a, b


def test_ssim_matches_scikit_image(gi_pair: tuple[np.ndarray, np.ndarray]) -> None:
    skm = pytest.importorskip("skimage.metrics")
    a, b = gi_pair
    opts = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 255}
    expected_rgb = skm.structural_similarity(a, b, channel_axis=2, **opts)
    expected_grey = skm.structural_similarity(a[..., 0], b[..., 0], **opts)
    assert ssim(a, b, data_range=255) == pytest.approx(expected_rgb, rel=1e-9)
    assert ssim(a[..., 0], b[..., 0], data_range=255) == pytest.approx(expected_grey, rel=1e-9)


def test_ms_ssim_last_scale_and_single_scale_reduce_to_ssim(gi_pair: tuple[np.ndarray, np.ndarray]) -> None:
    skm = pytest.importorskip("skimage.metrics")
    a, b = (x[..., 1].astype(np.float64) for x in gi_pair)
    opts = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 255}

    def pool(x: np.ndarray) -> np.ndarray:  # 2x2 mean, 4 times (192 -> 12 px)
        for _ in range(4):
            x = x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2).mean(axis=(1, 3))
        return x

    only_last = ms_ssim(a, b, data_range=255, weights=(0, 0, 0, 0, 1))
    assert only_last == pytest.approx(max(skm.structural_similarity(pool(a), pool(b), **opts), 0), rel=1e-9)
    assert ms_ssim(a, b, data_range=255, weights=(1.0,)) == pytest.approx(
        skm.structural_similarity(a, b, **opts), rel=1e-9
    )


def test_ms_ssim_identity_noise_and_validation(gi_pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = gi_pair
    assert ms_ssim(a, a, data_range=255) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(0)
    mild = np.clip(a + rng.normal(0, 5, a.shape), 0, 255)
    strong = np.clip(a + rng.normal(0, 40, a.shape), 0, 255)
    assert 1.0 > ms_ssim(a, mild, data_range=255) > ms_ssim(a, strong, data_range=255) > ms_ssim(a, b, data_range=255)
    with pytest.raises(ValueError, match="at least 176 px"):
        ms_ssim(a[:100, :100], b[:100, :100], data_range=255)
    with pytest.raises(ValueError, match="data_range"):
        ms_ssim(a, b, data_range=0)


def test_ms_ssim_diversity_of_prompt_images(shared_data: Path) -> None:
    images = load_images(sorted((shared_data / "gi").glob("*.jpg"))[:3])
    value, pairs = ms_ssim_diversity(images, data_range=255, size=192)
    assert pairs == 3
    resized = [np.asarray(im.resize((192, 192), Image.Resampling.BICUBIC)) for im in images]
    expected = np.mean([ms_ssim(resized[i], resized[j], data_range=255) for i, j in ((0, 1), (0, 2), (1, 2))])
    assert value == pytest.approx(expected, rel=1e-12)
    assert ms_ssim_diversity([images[0], images[0]], data_range=255, size=192)[0] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------- alignment


def test_alignment_on_tiny_random_clip_names_the_backbone() -> None:
    clip = tiny_clip(seed=0)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(3)]
    prompts = ["generate an image containing a polyp", "chest x-ray showing pneumonia", "normal colon"]
    result = alignment_metric(clip, images, prompts)
    img, txt = clip(images), clip.embed_texts(prompts)
    expected = np.mean(np.sum(img * txt, axis=1) / np.linalg.norm(img, axis=1) / np.linalg.norm(txt, axis=1))
    assert result.value == pytest.approx(expected, rel=1e-9)
    assert result.name == "alignment_clip-tiny-random"
    assert result.stamp.backbone == "tiny random CLIP" and result.stamp.n_a == 3
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        alignment_metric(clip, images, prompts[:2])


# ------------------------------------------------------------------------------------- MEDVQA-GI trio


def test_medvqa_gi_scores_aggregate_per_prompt() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(40, 4))
    gen = {p: rng.normal(loc=i * 0.5, size=(30, 4)) for i, p in enumerate(["a", "a'", "b"])}
    scores = medvqa_gi_scores(gen, real, paraphrase_groups=[["a", "a'"]])
    fids = [frechet_distance(gen[p], real) for p in gen]
    assert scores["fidelity"] == pytest.approx(np.mean([1000 / (1 + f) for f in fids]))
    assert scores["agreement"] == pytest.approx(1000 / (1 + frechet_distance(gen["a"], gen["a'"])))
    assert scores["diversity"] == pytest.approx(np.mean([mean_pairwise_distance(f) for f in gen.values()]))
    assert (scores["n_prompts"], scores["min_n"]) == (3, 30)
    same = medvqa_gi_scores({"a": real, "b": real}, {"a": real, "b": real}, [["a", "b"]])
    assert same["fidelity"] == pytest.approx(1000.0) and same["agreement"] == pytest.approx(1000.0)
    assert fd_score(0.0) == 1000.0
    with pytest.raises(ValueError, match="no real features"):
        medvqa_gi_scores(gen, {"a": real})


# --------------------------------------------------------------------------------- N, CIs and stamps


def test_equalize_n_subsamples_with_seed_or_refuses() -> None:
    rng = np.random.default_rng(0)
    sets = {"m1": rng.normal(size=(50, 3)), "m2": rng.normal(size=(30, 3))}
    out = equalize_n(sets, seed=1)
    assert {k: len(v) for k, v in out.items()} == {"m1": 30, "m2": 30}
    np.testing.assert_array_equal(out["m1"], equalize_n(sets, seed=1)["m1"])
    assert not np.array_equal(out["m1"], equalize_n(sets, seed=2)["m1"])
    assert all(any(np.array_equal(row, r) for r in sets["m1"]) for row in out["m1"])
    np.testing.assert_array_equal(out["m2"], sets["m2"])
    with pytest.raises(ValueError, match="unequal N"):
        equalize_n(sets, seed=1, on_unequal="refuse")


def test_bootstrap_ci_brackets_the_estimate_and_is_seeded() -> None:
    a, b = two_sets(200, 4)
    low, high = bootstrap_ci(frechet_distance, a, b, n_boot=60, seed=0)
    assert low < frechet_distance(a, b) < high
    assert bootstrap_ci(frechet_distance, a, b, n_boot=60, seed=0) == (low, high)


def test_metric_results_are_stamped_and_tabled_per_extractor() -> None:
    dino, clip = tiny_dinov2(), tiny_clip()
    a, b = two_sets(60, 16)
    fd = fd_metric(dino, a, b, seed=5, n_boot=20)
    kd = kid_metric(clip, a, b, seed=5, n_boot=5, n_subsets=10, subset_size=30)
    assert fd.name == "FD_dinov2-tiny-random" and kd.name == "KID_clip-tiny-random"
    assert fd.ci_low < fd.value < fd.ci_high
    assert fd.stamp.weights_sha256 == dino.weights_sha256 and (fd.stamp.n_a, fd.stamp.n_b, fd.stamp.seed) == (
        60,
        60,
        5,
    )
    assert "replicated to 3" in fd.stamp.preprocess and "numpy" in fd.stamp.versions
    tables = metrics_tables([fd, kd])
    assert set(tables) == {"metrics_dinov2-tiny-random", "metrics_clip-tiny-random"}
    row = tables["metrics_clip-tiny-random"].iloc[0]
    assert row["subset_size"] == 30 and row["n_a"] == 60 and "version_torch" in row.index
    section = metrics_report_section([fd, kd])
    section_tables = section["tables"] if isinstance(section, dict) else section.tables
    assert set(section_tables) == set(tables)


def test_compare_models_uses_equal_n() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(80, 8))
    models = {"good": rng.normal(size=(70, 8)), "bad": rng.normal(loc=1.0, size=(40, 8))}
    table = compare_models(tiny_dinov2(hidden_size=8), real, models, seed=0, n_boot=0, metrics=("FD", "CMMD"))
    assert set(table["n_a"]) == {40} and set(table["n_b"]) == {80}
    fd = table[table["metric"] == "FD_dinov2-tiny-random"].set_index("model")["value"]
    assert fd["bad"] > fd["good"]


def test_human_metric_correlation_matches_scipy_spearman() -> None:
    rng = np.random.default_rng(0)
    models = [f"m{i}" for i in range(6)]
    ratings = pd.DataFrame(
        {"model": np.repeat(models, 5), "realism_generated": pd.array(rng.integers(1, 6, 30), dtype="Int64")}
    ).sample(frac=1.0, random_state=0)
    metric_table = pd.DataFrame({"model": models[::-1], "FD_inception": rng.normal(size=6), "note": "x"})
    out = human_metric_correlation(ratings, metric_table, level="model")
    human = ratings.groupby("model")["realism_generated"].mean().astype(float)
    aligned = metric_table.set_index("model").loc[human.index, "FD_inception"]
    ref = scipy.stats.spearmanr(human.to_numpy(), aligned.to_numpy())
    assert list(out["metric"]) == ["FD_inception"]
    assert out["rho"].iloc[0] == pytest.approx(ref.statistic) and out["p_value"].iloc[0] == pytest.approx(ref.pvalue)
    assert out["n"].iloc[0] == 6
    with pytest.raises(ValueError, match="lacks column"):
        human_metric_correlation(ratings, metric_table, level="prompt")


# ------------------------------------------------------------------------------------- end to end


def test_end_to_end_gi_vs_radiology_with_tiny_extractor(shared_data: Path) -> None:
    gi = load_images(sorted((shared_data / "gi").glob("*.jpg")))
    rad = load_images(sorted((shared_data / "radiology").glob("*.jpg")))
    extractor = tiny_dinov2(seed=0, hidden_size=16)
    f_gi, f_rad = extractor(gi), extractor(rad)
    half = len(f_gi) // 2
    within = frechet_distance(f_gi[:half], f_gi[half:])
    across = frechet_distance(f_gi, f_rad)
    assert across > within
    assert kid(f_gi, f_rad, n_subsets=20, subset_size=20).mean > kid(f_gi[:half], f_gi[half:], 20, 20).mean
    assert cmmd(f_gi, f_rad) > cmmd(f_gi[:half], f_gi[half:])
