"""Adherence benchmark core: accuracy against scikit-learn, chance level, the committed classifier."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score

from generation.adherence import (
    attribute_accuracy,
    benchmark_prompts,
    chance_accuracy,
    load_classifier,
    load_demo_classifier,
    predict_attributes,
    save_classifier,
    score_generator,
)
from generation.demo_data import DOMAIN_ATTRIBUTES, generate_samples, parse_caption, render_image


@pytest.fixture(scope="module")
def classifier():
    torch.set_num_threads(1)
    return load_demo_classifier()


def test_attribute_accuracy_matches_sklearn_per_attribute():
    _, wanted = benchmark_prompts(40, seed=1)
    _, other = benchmark_prompts(40, seed=2)
    acc = attribute_accuracy(other, wanted)
    for domain, attrs in DOMAIN_ATTRIBUTES.items():
        rows = [i for i, w in enumerate(wanted) if w["domain"] == domain]
        for attr in attrs:
            ref = accuracy_score([str(wanted[i][attr]) for i in rows], [str(other[i][attr]) for i in rows])
            assert acc[attr] == pytest.approx(ref)
    assert acc["domain"] == 1.0
    pairs = [
        (p[a], w[a]) for p, w in zip(other, wanted, strict=True) for a in ("domain", *DOMAIN_ATTRIBUTES[w["domain"]])
    ]
    assert acc["mean"] == pytest.approx(accuracy_score([str(w) for _, w in pairs], [str(p) for p, _ in pairs]))
    with pytest.raises(ValueError, match="predictions"):
        attribute_accuracy(other[:3], wanted)


def test_chance_is_the_sum_of_squared_frequencies_within_domain():
    _, wanted = benchmark_prompts(50, seed=4)
    chance = chance_accuracy(wanted, rounds=3000)
    for domain, attrs in DOMAIN_ATTRIBUTES.items():
        values = [w for w in wanted if w["domain"] == domain]
        for attr in attrs:
            freq = np.array(list(Counter(v[attr] for v in values).values())) / len(values)
            assert chance[attr] == pytest.approx(float((freq**2).sum()), abs=0.01)
    assert chance["domain"] == 1.0


def test_committed_classifier_reads_real_frames_well_above_chance(classifier, tmp_path):
    data = generate_samples(60, seed=303)
    images, wanted = [d[0] for d in data], [d[2] for d in data]
    acc = attribute_accuracy(predict_attributes(classifier, images), wanted)
    chance = chance_accuracy(wanted)
    assert acc["domain"] >= 0.98
    assert acc["findings_mean"] >= chance["findings_mean"] + 0.3
    again = load_classifier(save_classifier(classifier, tmp_path / "c.safetensors"))
    assert predict_attributes(again, images[:8]) == predict_attributes(classifier, images[:8])
    with pytest.raises(ValueError, match="no adherence classifier"):
        load_classifier(tmp_path / "missing.safetensors")


def test_an_oracle_generator_adheres_and_its_shuffled_control_falls_to_chance(classifier):
    prompts, wanted = benchmark_prompts(40, seed=5)

    def oracle(batch, seeds):  # draws exactly what each prompt asks for
        return [render_image(parse_caption(p), np.random.default_rng(s)) for p, s in zip(batch, seeds, strict=True)]

    good = score_generator("oracle", oracle, prompts, wanted, classifier)
    control = score_generator("shuffled", oracle, prompts, wanted, classifier, shuffle_seed=0)
    chance = chance_accuracy(wanted)["findings_mean"]
    assert good.accuracy["findings_mean"] >= chance + 0.3
    assert abs(control.accuracy["findings_mean"] - chance) < 0.12
    assert control.accuracy["domain"] == good.accuracy["domain"]


def test_rows_carry_a_bootstrap_ci_and_held_out_prompts_are_unseen(classifier):
    from generation.adherence import findings_hits_per_prompt, ratio_ci, training_captions

    seen = training_captions(4, seed=0)  # a model trained on few frames leaves combinations unseen
    prompts, wanted = benchmark_prompts(5, seed=7, exclude=seen)
    assert len(prompts) == 10 and not set(prompts) & seen
    with pytest.raises(ValueError, match="only 0 unseen endoscopy prompts"):
        benchmark_prompts(1, exclude=training_captions(1000, seed=0))  # the demo model saw all 64
    seeds_seen: list[int] = []

    def oracle(batch, seeds):
        seeds_seen.extend(seeds)
        return [render_image(parse_caption(p), np.random.default_rng(s)) for p, s in zip(batch, seeds, strict=True)]

    row = score_generator("oracle", oracle, prompts, wanted, classifier, batch_size=16)
    assert len(set(seeds_seen)) == len(prompts)  # one generator per image, none shared across batches
    low, high = row.findings_ci
    assert low <= row.accuracy["findings_mean"] <= high and high - low < 0.5
    used = list(seeds_seen)
    hits, counts = findings_hits_per_prompt(predict_attributes(classifier, oracle(prompts, used)), wanted)
    assert hits.sum() / counts.sum() == pytest.approx(row.accuracy["findings_mean"])
    assert all(np.isnan(ratio_ci(np.array([1.0]), np.array([2.0]))))  # one prompt: no CI
