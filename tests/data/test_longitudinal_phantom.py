"""LongitudinalPhantomCXR: one anatomy per patient, findings that evolve visibly, comparison text."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from flamingo_lib.data.phantom.dataset import TEMPLATED_SPLIT_SIZES
from flamingo_lib.data.phantom.evolution import change_key
from flamingo_lib.data.phantom.longitudinal import LongitudinalPhantomCXR
from flamingo_lib.data.sample import CXRSample
from flamingo_lib.data.sources import open_source
from flamingo_lib.labeling.changes import change_statements, finding_mentions

SIZE = 64
COMPARISON_WORDS = re.compile(r"\b(?:new|increased|decreased|unchanged|stable|resolved|removed|no longer|interval)\b",
                              re.IGNORECASE)


@pytest.fixture(scope="module")
def test_split(tmp_path_factory: pytest.TempPathFactory) -> LongitudinalPhantomCXR:
    return LongitudinalPhantomCXR("test", image_size=SIZE, cache_dir=tmp_path_factory.mktemp("cache"))


def pixels(sample: CXRSample) -> np.ndarray:
    return np.asarray(sample.images[0], dtype=np.int16)


def first_follow_up(ds: LongitudinalPhantomCXR, wanted) -> int:
    """Index of the first follow-up study whose changes satisfy ``wanted``."""
    return next(i for i, c in enumerate(ds.changes) if ds.prior_index(i) is not None and wanted(c))


def test_splits_are_patient_disjoint_and_sized_like_the_templated_phantom() -> None:
    splits = {s: LongitudinalPhantomCXR(s, image_size=SIZE, cache=False) for s in ("train", "val", "test")}
    patients = {s: set(ds.patients) for s, ds in splits.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    for s, ds in splits.items():
        assert len(ds) == TEMPLATED_SPLIT_SIZES[s]
        assert len(patients[s]) < len(ds)  # patients have several studies
    per_patient = np.unique(splits["train"].patients, return_counts=True)[1]
    assert set(per_patient) == {1, 2, 3, 4}


def test_studies_are_ordered_and_prior_is_the_previous_study(test_split: LongitudinalPhantomCXR) -> None:
    ds = test_split
    i = first_follow_up(ds, lambda c: True)
    sample = ds[i]
    prior = sample.prior
    assert prior is not None and prior.prior is None
    assert prior.id == ds.ids[i - 1] and prior.meta["patient"] == sample.meta["patient"]
    assert prior.meta["study_index"] == sample.meta["study_index"] - 1
    assert prior.report == ds.reports[i - 1] and prior.images and prior.masks.keys() == ds[i - 1].masks.keys()
    assert np.array_equal(pixels(prior), pixels(ds[i - 1]))
    first = ds[i - 1 - prior.meta["study_index"]]
    assert first.meta["study_index"] == 0 and first.prior is None and first.meta["changes"] == {}
    assert sample.meta["credentialed"] is False and sample.meta["licence"].startswith("open")


def test_first_studies_have_no_comparison_words(test_split: LongitudinalPhantomCXR) -> None:
    firsts = [s for s in test_split.text_samples() if s.meta["study_index"] == 0]
    assert len(firsts) > 50
    for s in firsts:
        assert s.prior is None
        assert not COMPARISON_WORDS.search(s.report), s.report
        assert change_statements(s.report) == {}


def test_reports_state_exactly_the_true_changes_on_every_study() -> None:
    for seed in (0, 3):
        ds = LongitudinalPhantomCXR("val", image_size=SIZE, seed=seed, cache=False)
        changes = ds.changes
        assert sum(map(len, changes)) > 100
        assert {c for ch in changes for c in ch.values()} == {"new", "increased", "decreased", "unchanged", "resolved"}
        for report, truth in zip(ds.reports, changes):
            assert change_statements(report) == truth, report


def test_changes_cover_every_finding_of_both_studies(test_split: LongitudinalPhantomCXR) -> None:
    for s in test_split.text_samples():
        if s.prior is None:
            continue
        keys = {change_key(f) for f in s.findings} | {change_key(f) for f in s.prior.findings}
        assert set(s.meta["changes"]) == keys
        assert s.sections["FINDINGS"] == s.report


def test_indication_never_names_a_finding_the_prior_did_not_show(test_split: LongitudinalPhantomCXR) -> None:
    follow_ups_of_known_findings = 0
    for s in test_split.text_samples():
        assert s.indication and s.sections["INDICATION"] == s.indication
        known = set() if s.prior is None else {change_key(f) for f in s.prior.findings}
        assert finding_mentions(s.indication) <= known, (s.indication, known)
        new = {k for k, c in s.meta["changes"].items() if c == "new"}
        assert not finding_mentions(s.indication) & new
        follow_ups_of_known_findings += bool(finding_mentions(s.indication))
    # The history is used: follow-ups of a known finding name it.
    assert follow_ups_of_known_findings > 10


def test_same_anatomy_across_a_patients_studies(test_split: LongitudinalPhantomCXR) -> None:
    ds = test_split
    # Only unchanged findings: the very same film.
    i = first_follow_up(ds, lambda c: c and all(v == "unchanged" for v in c.values()))
    sample = ds[i]
    assert np.array_equal(pixels(sample), pixels(sample.prior))
    assert all(np.array_equal(sample.masks[k], sample.prior.masks[k]) for k in sample.masks)
    # Cardiomegaly stays and is drawn with the same heart.
    i = first_follow_up(ds, lambda c: c.get("cardiomegaly") == "unchanged" and len(c) > 1)
    sample = ds[i]
    assert np.array_equal(sample.masks["cardiomegaly"], sample.prior.masks["cardiomegaly"])
    # Whatever changed, most of the film (the anatomy) is pixel-identical to the prior film,
    # unlike the film of another patient.
    checked = 0
    for i in range(0, len(ds), 3):
        if ds.prior_index(i) is None:
            continue
        sample = ds[i]
        other = ds[(i + 5) % len(ds)]
        assert other.meta["patient"] != sample.meta["patient"]
        assert (pixels(sample) == pixels(sample.prior)).mean() > 0.5
        assert (pixels(sample) == pixels(other)).mean() < 0.25
        checked += 1
    assert checked > 10


def test_effusion_changes_are_visible(test_split: LongitudinalPhantomCXR) -> None:
    ds = test_split
    for change in ("increased", "new", "resolved"):
        i = first_follow_up(ds, lambda c: c.get("pleural effusion") == change)
        now, before = ds[i], ds[i].prior
        area_now = now.masks.get("pleural effusion", np.zeros((SIZE, SIZE), bool))
        area_before = before.masks.get("pleural effusion", np.zeros((SIZE, SIZE), bool))
        if change == "increased":
            assert area_now.sum() > 1.3 * area_before.sum() > 0
            assert (area_before & ~area_now).sum() <= 0.05 * area_before.sum()  # it grows, it does not move
        elif change == "new":
            assert area_now.any() and not area_before.any()
        else:
            assert area_before.any() and not area_now.any()
        region = area_now | area_before
        assert np.abs(pixels(now) - pixels(before))[region].mean() > 5.0


def test_device_placement_and_removal_are_visible(test_split: LongitudinalPhantomCXR) -> None:
    ds = test_split
    devices = ("central line", "endotracheal tube", "nasogastric tube", "pacemaker")
    for change in ("new", "resolved"):
        i = first_follow_up(ds, lambda c: any(c.get(d) == change for d in devices))
        now, before = ds[i], ds[i].prior
        with_device = now if change == "new" else before
        assert "support device" in with_device.masks
        assert "support device" not in (before if change == "new" else now).masks
        region = with_device.masks["support device"]
        assert np.abs(pixels(now) - pixels(before))[region].mean() > 10.0


def test_deterministic_across_constructions(tmp_path: Path) -> None:
    a = LongitudinalPhantomCXR("val", image_size=SIZE, seed=7, cache=False)
    b = LongitudinalPhantomCXR("val", image_size=SIZE, seed=7, cache=False)
    other = LongitudinalPhantomCXR("val", image_size=SIZE, seed=8, cache=False)
    assert a.ids == b.ids and a.reports == b.reports and a.changes == b.changes
    assert [s.indication for s in a.text_samples()] == [s.indication for s in b.text_samples()]
    assert a.reports != other.reports
    i = first_follow_up(a, lambda c: bool(c))
    assert np.array_equal(pixels(a[i]), pixels(b[i]))
    assert np.array_equal(pixels(a[i].prior), pixels(b[i].prior))


def test_text_accessors_render_nothing(tmp_path: Path) -> None:
    ds = LongitudinalPhantomCXR("val", image_size=SIZE, views=("PA", "LATERAL"), cache_dir=tmp_path)
    reports, counts, samples = ds.reports, ds.image_counts, ds.text_samples()
    assert len(reports) == len(counts) == len(samples) == len(ds)
    assert set(counts) == {2}  # the current study's views only
    assert all(not s.images and (s.prior is None or not s.prior.images) for s in samples)
    assert not any(tmp_path.rglob("*"))


def test_prior_reuses_the_render_cache(tmp_path: Path) -> None:
    ds = LongitudinalPhantomCXR("val", image_size=SIZE, cache_dir=tmp_path)
    i = first_follow_up(ds, lambda c: bool(c))
    sample = ds[i]
    assert sorted(p.name for p in tmp_path.rglob("*.npz")) == sorted(
        ds.cache_path(j).name for j in (i - 1, i))
    again = ds[i - 1]  # now read from the entry written when it was the prior
    assert np.array_equal(pixels(again), pixels(sample.prior))
    assert len(list(tmp_path.rglob("*.npz"))) == 2


def test_lateral_view_and_source_spec() -> None:
    ds = LongitudinalPhantomCXR("test", image_size=SIZE, views=("PA", "LATERAL"), cache=False, max_samples=4)
    i = first_follow_up(ds, lambda c: True)
    sample = ds[i]
    assert sample.views == ["PA", "LATERAL"] and len(sample.images) == 2 and len(sample.prior.images) == 2
    opened = open_source("phantom:longitudinal", "test", image_size=SIZE, max_samples=5, seed=2)
    assert isinstance(opened, LongitudinalPhantomCXR) and len(opened) == 5 and opened.seed == 2


def test_a_phantom_spec_takes_views_and_refuses_a_view_it_cannot_draw():
    from flamingo_lib.data.sources import open_source

    both = open_source("phantom:longitudinal;views=PA+LATERAL", "val", image_size=64, max_samples=3)
    follow_up = next(both[i] for i in range(len(both)) if both[i].prior is not None)
    assert follow_up.views == ["PA", "LATERAL"] and len(follow_up.images) == len(follow_up.prior.images) == 2
    assert len(open_source("phantom:templated;views=PA+LATERAL", "val", image_size=64, max_samples=1)[0].images) == 2
    with pytest.raises(ValueError, match="views are PA or LATERAL joined by"):
        open_source("phantom:templated;views=AP", "val")
