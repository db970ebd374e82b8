"""Training order: seeded permutations, and repeat-factor sampling of studies with rare findings."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from flamingo_lib.training.sampling import epoch_order, repeat_factors, study_labels

NORMAL, EDEMA = {"No Finding": 1.0, "Edema": 0.0}, {"Edema": 1.0, "Pleural Effusion": -1.0}


def test_repeat_factors_follow_the_lvis_rule():
    # f(No Finding) = 3/4, f(Edema) = 1/4; uncertain (-1) and negative (0) labels count for nothing
    factors = repeat_factors([NORMAL, NORMAL, NORMAL, EDEMA], threshold=1.0)
    assert factors[0] == pytest.approx(math.sqrt(4 / 3)) and factors[3] == pytest.approx(2.0)
    # classes at or above the threshold are not repeated; a study takes its rarest class's factor
    assert repeat_factors([NORMAL, NORMAL, NORMAL, EDEMA], threshold=0.25) == [1.0, 1.0, 1.0, 1.0]
    both = {"Edema": 1.0, "Fracture": 1.0}
    assert repeat_factors([NORMAL] * 7 + [EDEMA, both], 0.5)[-1] == pytest.approx(math.sqrt(0.5 / (1 / 9)))


def test_repeat_factors_refuse_a_meaningless_threshold():
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\], got 0"):
        repeat_factors([NORMAL], 0.0)


def test_epoch_order_without_factors_is_a_fixed_permutation():
    assert sorted(epoch_order(10, 0, 0)) == list(range(10))
    assert epoch_order(10, 0, 0) == epoch_order(10, 0, 0) != epoch_order(10, 0, 1)


def test_epoch_order_repeats_each_study_by_its_factor():
    order = epoch_order(4, seed=0, epoch=0, factors=[1.0, 1.0, 3.0, 2.0])
    assert Counter(order) == {0: 1, 1: 1, 2: 3, 3: 2}
    assert order == epoch_order(4, 0, 0, [1.0, 1.0, 3.0, 2.0])  # replayable on resume
    # fractional parts: study 1 appears once or twice, twice in about half the epochs
    twice = sum(Counter(epoch_order(2, 0, epoch, [1.0, 1.5]))[1] == 2 for epoch in range(400))
    assert 160 < twice < 240
    with pytest.raises(ValueError, match="3 repeat factors for 2 samples"):
        epoch_order(2, 0, 0, [1.0, 1.0, 1.0])


def test_study_labels_read_the_label_frame_without_rendering_images():
    from flamingo_lib.data.phantom.dataset import PhantomCXR

    data = PhantomCXR(split="train", image_size=64, text="templated", max_samples=30)
    rendered = []
    data._images = lambda index: rendered.append(index)  # any image access would show here
    labels = study_labels(data)
    assert len(labels) == 30 and rendered == []
    assert labels == data.label_frame().to_dict(orient="records")
