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
from scipy.spatial.distance import pdist
from sklearn.metrics.pairwise import cosine_similarity
from sklearn.metrics.pairwise import polynomial_kernel as sk_polynomial_kernel
from sklearn.preprocessing import normalize

from analysis.features import load_images
from analysis.features.tiny import tiny_biomedclip, tiny_clip, tiny_dinov2
from analysis.metrics import (
    FrechetDistance,
    _compute_fd,
    alignment_metric,
    cmmd,
    cmmd_bootstrap_ci,
    compare_models,
    diversity_by_group,
    equalize_n,
    fd_metric,
    fd_score,
    feature_bootstrap_ci,
    feature_stats,
    frechet_distance,
    human_metric_comparison,
    kid,
    kid_metric,
    mean_pairwise_distance,
    medvqa_gi_2025,
    metrics_report_section,
    metrics_tables,
    ms_ssim,
    ms_ssim_diversity,
    ssim,
)
from db.errors import InputError

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


def test_cmmd_matches_direct_numpy_mmd() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 6)) * 4
    y = rng.normal(size=(9, 6)) * 4 + 2

    def k(p: np.ndarray, q: np.ndarray) -> float:
        return float(np.exp(-np.sum((p - q) ** 2) / (2 * 10.0**2)))

    def off_diagonal_mean(p: np.ndarray) -> float:
        return np.mean([k(p[i], p[j]) for i in range(len(p)) for j in range(len(p)) if i != j])

    kxx, kyy = np.mean([[k(p, q) for q in x] for p in x]), np.mean([[k(p, q) for q in y] for p in y])
    kxy = np.mean([[k(p, q) for q in y] for p in x])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unbiased = 1000 * (off_diagonal_mean(x) + off_diagonal_mean(y) - 2 * kxy)
        assert cmmd(x, y) == pytest.approx(unbiased, rel=1e-10)
        assert cmmd(x, y, estimator="biased") == pytest.approx(1000 * (kxx + kyy - 2 * kxy), rel=1e-10)
        assert cmmd(x, x, estimator="biased") == pytest.approx(0.0, abs=1e-9)
        with pytest.raises(InputError, match="at least 2"):
            cmmd(x[:1], y)


def test_cmmd_unbiased_is_zero_on_one_distribution_at_n50() -> None:
    """Two samples of one distribution: unbiased ~0 (mean over seeds inside its CI), biased clearly > 0."""
    unbiased, biased, cis = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in range(20):
            rng = np.random.default_rng(seed)
            a = rng.normal(size=(100, 8)) * 3
            x, y = a[:50], a[50:]
            unbiased.append(cmmd(x, y))
            biased.append(cmmd(x, y, estimator="biased"))
            cis.append(cmmd_bootstrap_ci(x, y, n_boot=100, seed=seed))
    mean = float(np.mean(unbiased))
    low, high = np.mean(cis, axis=0)
    assert low < mean < high and low < 0 < high
    assert abs(mean) < 0.1 * np.mean(biased)
    assert min(biased) > 0  # the V-statistic is positive even when the two distributions are equal


def test_cmmd_warns_below_a_few_hundred_images() -> None:
    rng = np.random.default_rng(0)
    with pytest.warns(UserWarning, match="N=40"):
        cmmd(rng.normal(size=(40, 4)), rng.normal(size=(60, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cmmd(rng.normal(size=(300, 4)), rng.normal(size=(300, 4)))


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


def official_medvqa_gi_2025(
    gen: dict[int, np.ndarray], real: dict[int, np.ndarray], first_half_only: bool
) -> dict[str, float]:
    """The published scoring (submission_task2.py of SushantGautam/MedVQA), written out from its formulas.

    Prompts are paired (0, 1), (2, 3), ... in sorted order; ``first_half_only`` is the script's loop
    ``range(0, len(prompts) // 2, 2)``; otherwise ``range(0, len(prompts), 2)``.
    """

    def fid(f1: np.ndarray, f2: np.ndarray) -> float:
        s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
        return float(((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))

    keys = sorted(gen)
    stop = len(keys) // 2 if first_half_only else len(keys)
    fids, agreements, diversities, all_gen, all_real = [], [], [], [], []
    for i in range(0, stop, 2):
        a, b = gen[keys[i]], gen[keys[i + 1]]
        agreements.append(cosine_similarity(normalize(a), normalize(b)).mean())
        diversities += [pdist(normalize(a)).mean(), pdist(normalize(b)).mean()]
        ref = real[keys[i]]
        fids.append((fid(a, ref) + fid(b, ref)) / 2)
        all_gen += [*a, *b]
        all_real += list(ref)
    return {
        "fidelity": float(np.mean(1000 / (1 + np.array(fids)))),
        "agreement": float(np.mean(agreements)),
        "diversity": float(np.mean(diversities)),
        "FBD": fid(np.array(all_gen), np.array(all_real)),
    }


def paraphrase_fixture(dim: int, seed: int = 0) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """4 paraphrase pairs, 10 images per prompt; in each pair one prompt is much worse (shifted) than the other."""
    rng = np.random.default_rng(seed)
    gen, real = {}, {}
    for pair in range(4):
        ref = rng.normal(loc=pair, size=(12 + pair, dim))
        real[2 * pair] = real[2 * pair + 1] = ref
        gen[2 * pair] = rng.normal(loc=pair, scale=1.1, size=(10, dim))
        gen[2 * pair + 1] = rng.normal(loc=pair + 2.0 + pair, scale=0.6, size=(10, dim))
    return gen, real


@pytest.mark.parametrize("script_quirk", [False, True])
def test_medvqa_gi_2025_equals_the_published_formulas(script_quirk: bool) -> None:
    gen, real = paraphrase_fixture(dim=6)  # N=10 > dim: covariances full rank, so sqrtm is exact too
    pairs = [(2 * i, 2 * i + 1) for i in range(4)]
    scores = medvqa_gi_2025(gen, real, pairs, script_quirk=script_quirk)
    reference = official_medvqa_gi_2025(gen, real, first_half_only=script_quirk)
    got = scores.as_dict()
    for key, value in reference.items():
        assert got[key] == pytest.approx(value, rel=1e-7), key
    assert scores.n_pairs == (2 if script_quirk else 4) and scores.n_per_prompt == 10
    # Fidelity averages FD over the pair before the transform: not the per-prompt mean of 1000/(1+FD).
    per_prompt = np.mean([1000 / (1 + frechet_distance(gen[p], real[p])) for pair in pairs for p in pair])
    assert script_quirk or scores.fidelity != pytest.approx(per_prompt, rel=1e-3)
    # Agreement is a cosine similarity in [-1, 1], diversity is on unit vectors (<= 2).
    assert -1 <= scores.agreement <= 1 and 0 < scores.diversity <= 2


def test_medvqa_gi_2025_singular_covariances_match_the_script_closely() -> None:
    gen, real = paraphrase_fixture(dim=32, seed=1)  # 10 images, 32-d: singular, as in the challenge (768-d)
    pairs = [(2 * i, 2 * i + 1) for i in range(4)]
    exact = medvqa_gi_2025(gen, real, pairs).as_dict()
    reference = official_medvqa_gi_2025(gen, real, first_half_only=False)
    for key in ("fidelity", "FBD"):
        assert exact[key] == pytest.approx(reference[key], rel=1e-4), key
    quirk = medvqa_gi_2025(gen, real, pairs, script_quirk=True).as_dict()
    reference = official_medvqa_gi_2025(gen, real, first_half_only=True)
    for key, value in reference.items():
        assert quirk[key] == pytest.approx(value, rel=1e-9), key


def test_medvqa_gi_2025_invariants() -> None:
    rng = np.random.default_rng(3)
    same = rng.normal(size=(10, 5))
    # Generated == real: FD(A, A) = 0, so fidelity is the maximum 1000.
    scores = medvqa_gi_2025({"a": same, "b": same}, {"a": same}, [("a", "b")])
    assert scores.fidelity == pytest.approx(1000.0) and scores.per_pair["fd_a_b"].iloc[0] == pytest.approx(
        0.0, abs=1e-9
    )
    # FBD is one FD of all generated images (A then B) against all real ones: 0 when they are the same set.
    other = rng.normal(size=(10, 5))
    both = np.vstack([same, other])
    assert medvqa_gi_2025({"a": same, "b": other}, both, [("a", "b")]).fbd == pytest.approx(0.0, abs=1e-9)
    # Ten copies of one direction: agreement 1, diversity 0; the norm does not matter (features are normalised).
    one = np.tile(rng.normal(size=(1, 5)), (10, 1))
    collapsed = medvqa_gi_2025({"a": one, "b": 3 * one}, same, [("a", "b")])
    assert collapsed.agreement == pytest.approx(1.0) and collapsed.diversity == pytest.approx(0.0, abs=1e-12)
    # Agreement and diversity ignore the scale of the features; fidelity does not.
    scaled = medvqa_gi_2025({"a": 2 * same, "b": same[::-1]}, same, [("a", "b")])
    plain = medvqa_gi_2025({"a": same, "b": same[::-1]}, same, [("a", "b")])
    assert scaled.agreement == pytest.approx(plain.agreement) and scaled.diversity == pytest.approx(plain.diversity)
    assert scaled.fidelity < plain.fidelity
    with pytest.raises(InputError, match="10 per prompt"):
        medvqa_gi_2025({"a": same[:9], "b": same}, same, [("a", "b")])
    with pytest.raises(InputError, match="no real features"):
        medvqa_gi_2025({"a": same, "b": same}, {"b": same}, [("a", "b")])
    with pytest.raises(InputError, match="no generated features"):
        medvqa_gi_2025({"a": same}, same, [("a", "b")])
    assert fd_score(0.0) == 1000.0


def test_biomedclip_extractor_returns_the_unnormalised_cls_hidden_state() -> None:
    extractor = tiny_biomedclip(hidden_size=24)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 40, 48, 3), dtype=np.uint8)
    feats = extractor(images)
    assert feats.shape == (3, 24) and extractor.dim == 24
    from analysis.features import preprocess_batch

    with torch.inference_mode():
        out = extractor.model(pixel_values=preprocess_batch(images, extractor.preprocess))
    np.testing.assert_allclose(feats, out.last_hidden_state[:, 0, :].double().numpy(), rtol=1e-6)
    assert not np.allclose(np.linalg.norm(feats, axis=1), 1.0)  # not the projected unit-norm embedding
    assert not np.allclose(feats, out.pooler_output.double().numpy())  # before the final layer norm


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


def test_feature_bootstrap_ci_brackets_the_estimate_and_is_seeded() -> None:
    a, b = two_sets(200, 4)
    low, high = feature_bootstrap_ci(frechet_distance, a, b, n_boot=60, seed=0)
    assert low < frechet_distance(a, b) < high
    assert feature_bootstrap_ci(frechet_distance, a, b, n_boot=60, seed=0) == (low, high)


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
    assert set(section.tables) == set(tables)
    assert "dinov2-tiny-random" in section.methods[0] and "N = 60 generated" in section.methods[0]


def test_compare_models_uses_equal_n() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(80, 8))
    models = {"good": rng.normal(size=(70, 8)), "bad": rng.normal(loc=1.0, size=(40, 8))}
    table = compare_models(tiny_dinov2(hidden_size=8), real, models, seed=0, n_boot=0, metrics=("FD", "CMMD"))
    assert set(table["n_a"]) == {40} and set(table["n_b"]) == {80}
    fd = table[table["metric"] == "FD_dinov2-tiny-random"].set_index("model")["value"]
    assert fd["bad"] > fd["good"]


def _expert_ratings(n_cases: int, models: list[str], seed: int, signal: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """3 raters x n_cases x models ratings whose realism follows a latent per-image quality (times ``signal``)."""
    rng = np.random.default_rng(seed)
    rows, images = [], []
    for m, model in enumerate(models):
        for c in range(n_cases):
            quality = rng.normal() + 0.5 * m
            images.append({"generated_image": f"g-{model}-{c}", "quality": quality})
            for rater in range(3):
                score = int(np.clip(np.rint(3 + signal * quality + rng.normal(scale=0.7)), 1, 5))
                image = f"g-{model}-{c}"
                row = {"item_kind": "normal", "case": f"c{c}", "model": model, "generated_image": image}
                rows.append(row | {"rater": f"r{rater}", "realism_generated": score, "accuracy_generated": 6 - score})
    ratings = pd.DataFrame(rows).astype({"realism_generated": "Int64", "accuracy_generated": "Int64"})
    return ratings, pd.DataFrame(images)


def test_human_metric_comparison_matches_scipy_and_ranks_models() -> None:
    ratings, images = _expert_ratings(20, ["a", "b", "c"], seed=0, signal=1.0)
    # A per-image metric where lower is better (like a distance to the nearest real image).
    image_metrics = images.assign(metric="nn", value=-images["quality"], lower_is_better=True)
    model_metrics = pd.DataFrame({"model": ["a", "b", "c"], "metric": "FD", "value": [30.0, 20.0, 10.0],
                                  "lower_is_better": True})  # fmt: skip
    out = human_metric_comparison(ratings, model_metrics, image_metrics.drop(columns="quality"), n_boot=200, seed=1)
    human = ratings.groupby("generated_image")["realism_generated"].mean().astype(float)
    ref = image_metrics.set_index("generated_image").loc[human.index, "value"]
    row = out.per_case.set_index(["metric", "question", "model"]).loc[("nn", "realism", "all models")]
    assert row["spearman_rho"] == pytest.approx(scipy.stats.spearmanr(ref, human).statistic)
    assert row["kendall_tau"] == pytest.approx(scipy.stats.kendalltau(ref, human).statistic)
    assert row["spearman_ci_low"] < row["spearman_rho"] < row["spearman_ci_high"] < 0  # lower distance, more real
    assert (row["n_images"], row["n_cases"]) == (60, 20)
    assert set(out.per_case["model"]) == {"all models", "a", "b", "c"}
    again = human_metric_comparison(ratings, model_metrics, image_metrics.drop(columns="quality"), n_boot=200, seed=1)
    pd.testing.assert_frame_equal(out.per_case, again.per_case)
    rank = out.ranking.set_index(["metric", "question"]).loc[("FD", "realism")]
    assert rank["expert_order"] == "c > b > a" and rank["metric_order"] == "c > b > a" and rank["same_order"]
    assert rank["kendall_tau_orders"] == pytest.approx(1.0)
    model_row = out.per_model.set_index(["metric", "question"]).loc[("FD", "realism")]
    assert model_row["spearman_rho"] == pytest.approx(1.0) and model_row["n_models"] == 3
    assert set(out.scatter["level"]) == {"image", "model"}
    two = human_metric_comparison(ratings[ratings["model"] != "c"], model_metrics, None, n_boot=50)
    assert np.isnan(two.per_model["spearman_rho"]).all() and len(two.ranking) == 2  # 2 models: order only
    with pytest.raises(InputError, match="lacks column"):
        human_metric_comparison(ratings.drop(columns="case"), model_metrics)


@pytest.mark.slow
def test_human_metric_case_bootstrap_ci_holds_its_level_under_independence() -> None:
    covered = 0
    n_sims = 40
    for seed in range(n_sims):
        ratings, images = _expert_ratings(25, ["a"], seed=seed, signal=1.0)
        noise = np.random.default_rng(1000 + seed).normal(size=len(images))  # unrelated to the experts
        metric = images.assign(metric="m", value=noise, lower_is_better=False).drop(columns="quality")
        row = human_metric_comparison(ratings, None, metric, n_boot=100, seed=seed).per_case.iloc[0]
        covered += row["spearman_ci_low"] <= 0 <= row["spearman_ci_high"]
    assert covered / n_sims >= 0.85  # nominal 0.95; percentile bootstrap at 25 cases is a little liberal


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
