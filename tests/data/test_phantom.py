"""PhantomCXR: the procedural renderer, its text and labels, splits and the disk cache."""

from __future__ import annotations

import importlib.util
import random
import re

import numpy as np
import pytest

import flamingo_lib.data.phantom.dataset as phantom_module
from flamingo_lib.data.datasets.iu_reports import IUReport, iu_split
from flamingo_lib.data.phantom.dataset import TEMPLATED_SPLIT_SIZES, PhantomCXR
from flamingo_lib.data.phantom.render import RENDERABLE_FINDINGS, render_phantom, stable_seed
from flamingo_lib.data.phantom.text import findings_to_labels, sample_findings, templated_report
from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS, Finding

SIZE = 128


def pixels(findings: list[Finding], seed: int, size: int = SIZE) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    image, masks = render_phantom(findings, seed=seed, image_size=size)
    assert image.mode == "L" and image.size == (size, size)
    return np.asarray(image, dtype=np.float64), masks


def centroid_x(mask: np.ndarray) -> float:
    """Mask centroid as a fraction of the image width."""
    return float(np.nonzero(mask)[1].mean()) / mask.shape[1]


# --- renderer ---------------------------------------------------------------------------


def test_same_seed_renders_identical_pixels_and_masks() -> None:
    findings = [Finding("pleural effusion", "left"), Finding("nodule"), Finding("support device")]
    first, first_masks = pixels(findings, seed=5)
    second, second_masks = pixels(findings, seed=5)
    assert np.array_equal(first, second)
    assert first_masks.keys() == second_masks.keys()
    assert all(np.array_equal(first_masks[k], second_masks[k]) for k in first_masks)


def test_different_seeds_give_different_patients() -> None:
    images = [pixels([], seed=s)[0] for s in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            # Whole-film differences (pose, size, exposure), not just noise.
            assert np.abs(images[i] - images[j]).mean() > 8.0


@pytest.mark.parametrize("name", sorted(RENDERABLE_FINDINGS))
def test_each_renderable_finding_changes_pixels_inside_its_mask(name: str) -> None:
    for seed in (3, 11):
        without, _ = pixels([], seed)
        with_, masks = pixels([Finding(name)], seed)
        mask = masks[name]
        assert mask.dtype == bool and mask.shape == (SIZE, SIZE) and mask.any()
        change = np.abs(with_ - without)
        assert change[mask].mean() > 2.0, "the finding is not visible"
        assert change[mask].mean() > 3.0 * change[~mask].mean(), "the change is not where the mask says"


def test_unrenderable_finding_is_skipped_without_mask_or_pixel_change() -> None:
    assert "tortuous aorta" not in RENDERABLE_FINDINGS
    plain, _ = pixels([], seed=2)
    skipped, masks = pixels([Finding("tortuous aorta")], seed=2)
    assert masks == {} and np.array_equal(plain, skipped)


def test_adding_a_finding_leaves_the_other_findings_in_place() -> None:
    _, alone = pixels([Finding("nodule", "right")], seed=4)
    _, together = pixels([Finding("mass", "left"), Finding("nodule", "right")], seed=4)
    assert np.array_equal(alone["nodule"], together["nodule"])


def test_synonyms_for_one_anatomic_change_apply_it_once() -> None:
    # IU lists emphysema, COPD and hyperinflation together for one pair of big lungs.
    once, once_masks = pixels([Finding("emphysema", severity="severe")], seed=6)
    both, both_masks = pixels([Finding("emphysema", severity="severe"), Finding("hyperinflation")], seed=6)
    assert np.array_equal(once, both)
    assert np.array_equal(once_masks["emphysema"], both_masks["hyperinflation"])


@pytest.mark.parametrize("name", ["pleural effusion", "pneumothorax", "nodule", "consolidation", "fracture"])
def test_patient_side_follows_radiological_convention(name: str) -> None:
    # PA film viewed facing the patient: patient's left is on the image right.
    for seed in range(3):
        _, left = pixels([Finding(name, "left")], seed)
        _, right = pixels([Finding(name, "right")], seed)
        assert centroid_x(left[name]) > 0.5 > centroid_x(right[name])


def test_bilateral_effusion_marks_both_bases() -> None:
    _, masks = pixels([Finding("pleural effusion", "bilateral")], seed=1)
    mask = masks["pleural effusion"]
    assert mask[:, : SIZE // 2].any() and mask[:, SIZE // 2 :].any()


@pytest.mark.parametrize(
    ("name", "grades"),
    [
        ("pleural effusion", ("small", "moderate", "large")),
        ("pneumothorax", ("small", "moderate", "large")),
        ("cardiomegaly", ("mild", "moderate", "severe")),
    ],
)
def test_severity_grows_the_finding(name: str, grades: tuple[str, ...]) -> None:
    for seed in (0, 7):
        areas = [pixels([Finding(name, "right", severity=g)], seed)[1][name].sum() for g in grades]
        assert areas[0] < areas[1] < areas[2]


def test_missing_side_is_chosen_from_the_seed() -> None:
    sides = []
    for seed in range(8):
        _, once = pixels([Finding("pleural effusion")], seed)
        _, again = pixels([Finding("pleural effusion")], seed)
        assert np.array_equal(once["pleural effusion"], again["pleural effusion"])
        sides.append(centroid_x(once["pleural effusion"]) > 0.5)
    assert any(sides) and not all(sides)


def test_missing_severity_renders_as_moderate() -> None:
    _, unstated = pixels([Finding("pleural effusion", "left")], seed=9)
    _, moderate = pixels([Finding("pleural effusion", "left", severity="moderate")], seed=9)
    assert np.array_equal(unstated["pleural effusion"], moderate["pleural effusion"])


def test_lateral_view_renders_the_same_patient_with_its_own_masks() -> None:
    image, masks = render_phantom([Finding("cardiomegaly"), Finding("fracture")], seed=3, image_size=SIZE, view="LATERAL")
    assert image.mode == "L" and image.size == (SIZE, SIZE)
    assert set(masks) == {"cardiomegaly"}  # fractures are not drawn on the lateral


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"view": "AP"}, "view"), ({"image_size": 8}, "image_size")],
)
def test_render_rejects_bad_arguments_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_phantom([], seed=0, **kwargs)


def test_render_rejects_non_findings() -> None:
    with pytest.raises(TypeError, match="Finding"):
        render_phantom(["pleural effusion"], seed=0)  # type: ignore[list-item]


# --- text and labels --------------------------------------------------------------------

# What a reader must find in the report for each finding name.
_MENTIONS = {
    "cardiomegaly": r"cardiomegaly|heart is \w+ enlarged|silhouette is enlarged",
    "pleural effusion": r"pleural effusion",
    "opacity": r"opacit",
    "consolidation": r"consolidation",
    "pneumonia": r"pneumonia",
    "edema": r"edema",
    "nodule": r"nodul",
    "mass": r"mass",
    "granuloma": r"granuloma",
    "atelectasis": r"atelectasis",
    "pneumothorax": r"pneumothorax",
    "emphysema": r"emphysema",
    "support device": r"pacemaker|catheter|line|tube",
    "fracture": r"fracture",
    "scoliosis": r"scoliosis",
}


def test_templated_reports_mention_every_finding_with_its_side() -> None:
    rng = random.Random(0)
    seen = set()
    for _ in range(400):
        findings = sample_findings(rng)
        report = templated_report(findings, rng).lower()
        for f in findings:
            seen.add(f.name)
            assert re.search(_MENTIONS[f.name], report), (f, report)
            if f.side in ("left", "right") and f.name not in ("support device",):
                assert f.side in report, (f, report)
    assert seen == set(_MENTIONS)


def test_templated_normal_report_states_the_key_negatives() -> None:
    report = templated_report((), random.Random(1)).lower()
    assert re.search(r"heart size is normal|normal heart size|within normal limits", report)
    assert "no pleural effusion" in report or "no pneumothorax or pleural effusion" in report


def test_sample_findings_is_about_forty_percent_normal_and_renderable() -> None:
    rng = random.Random(3)
    sets = [sample_findings(rng) for _ in range(2000)]
    assert 0.35 < sum(not s for s in sets) / len(sets) < 0.45
    assert all(f.name in RENDERABLE_FINDINGS for s in sets for f in s)


def test_labels_follow_the_drawn_findings() -> None:
    labels = findings_to_labels([Finding("consolidation", "left"), Finding("support device")])
    assert list(labels) == list(CHEXPERT_OBSERVATIONS)
    positive = {k for k, v in labels.items() if v == 1.0}
    assert positive == {"Consolidation", "Lung Opacity", "Support Devices"}
    assert all(v == 0.0 for k, v in labels.items() if k not in positive)


def test_no_finding_ignores_devices_and_undrawn_findings() -> None:
    assert findings_to_labels([])["No Finding"] == 1.0
    assert findings_to_labels([Finding("support device")])["No Finding"] == 1.0
    assert findings_to_labels([Finding("tortuous aorta")])["No Finding"] == 1.0
    assert findings_to_labels([Finding("pleural effusion")])["No Finding"] == 0.0


# --- dataset ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"split": "dev"}, "split"), ({"text": "mimic"}, "text"), ({"views": ("AP",)}, "views"), ({"image_size": 4}, "image_size")],
)
def test_dataset_rejects_bad_names(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PhantomCXR(**{"text": "templated", **kwargs})


def test_templated_splits_are_fixed_sized_disjoint_and_deterministic() -> None:
    splits = {s: PhantomCXR(s, text="templated", cache=False) for s in TEMPLATED_SPLIT_SIZES}
    assert {s: len(d) for s, d in splits.items()} == TEMPLATED_SPLIT_SIZES
    ids = [set(d.ids) for d in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    again = PhantomCXR("val", text="templated", cache=False)
    assert again.label_frame().equals(splits["val"].label_frame())
    other_seed = PhantomCXR("val", text="templated", seed=1, cache=False)
    assert not other_seed.label_frame().equals(splits["val"].label_frame())
    # the reports without rendering: the same texts the samples carry
    assert again.reports[:2] == [again[0].report, again[1].report] and len(again.reports) == len(again)


def test_text_samples_carry_what_the_samples_do_but_the_films_and_render_nothing(monkeypatch) -> None:
    ds = PhantomCXR("val", text="templated", image_size=64, cache=False, max_samples=5)
    rendered = [ds[i] for i in range(len(ds))]
    monkeypatch.setattr(phantom_module, "render_phantom", lambda *a, **k: pytest.fail("text_samples rendered a film"))
    texts = ds.text_samples()
    assert [t.id for t in texts] == ds.ids
    for text, sample in zip(texts, rendered):
        assert (text.report, text.findings, text.labels, text.sections) == (
            sample.report, sample.findings, sample.labels, sample.sections)
        assert text.images == [] and text.masks == {} and text.meta["split"] == "val"


def _report(number: int, sections: dict[str, str], mesh: tuple[str, ...] = ()) -> IUReport:
    from flamingo_lib.data.datasets.iu_reports import mesh_to_findings

    return IUReport(f"CXR{number}", sections, mesh, mesh_to_findings(mesh), ())


def test_iu_mode_uses_findings_then_impression_and_skips_empty_reports() -> None:
    numbers = [n for n in range(1, 400) if iu_split(f"CXR{n}") == "test"][:3]
    reports = [
        _report(numbers[0], {"FINDINGS": "Small left effusion.", "IMPRESSION": "Effusion."}, ("Pleural Effusion/left/small",)),
        _report(numbers[1], {"IMPRESSION": "No acute disease."}, ("normal",)),
        _report(numbers[2], {"INDICATION": "Cough."}),
        _report(next(n for n in range(1, 400) if iu_split(f"CXR{n}") == "train"), {"FINDINGS": "Clear."}),
    ]
    ds = PhantomCXR("test", text="iu", reports=reports, cache=False, image_size=64)
    assert ds.ids == [f"CXR{numbers[0]}", f"CXR{numbers[1]}"]
    first, second = ds[0], ds[1]
    assert first.report == "Small left effusion." and second.report == "No acute disease."
    assert first.findings == [Finding("pleural effusion", "left", None, "small", "Pleural Effusion/left/small")]
    assert first.labels["Pleural Effusion"] == 1.0 and second.labels["No Finding"] == 1.0
    assert centroid_x(first.masks["pleural effusion"]) > 0.5
    assert first.meta["seed"] == stable_seed("phantom-image", first.id, 0)


@pytest.mark.skipif(importlib.util.find_spec("torchxrayvision") is None, reason="IU reports ship with torchxrayvision")
def test_real_iu_splits_partition_the_reports_with_text() -> None:
    from flamingo_lib.data.datasets.iu_reports import load_iu_reports

    reports = load_iu_reports()
    ids = {s: set(PhantomCXR(s, text="iu", cache=False, reports=reports).ids) for s in ("train", "val", "test")}
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert set().union(*ids.values()) == {r.id for r in reports if r.report}


def test_sample_carries_images_masks_labels_and_meta() -> None:
    ds = PhantomCXR("val", text="templated", views=("PA", "LATERAL"), image_size=64, cache=False, max_samples=6)
    assert len(ds) == 6
    frame = ds.label_frame()
    for i in range(len(ds)):
        sample = ds[i]
        assert [im.size for im in sample.images] == [(64, 64), (64, 64)] and sample.views == ["PA", "LATERAL"]
        assert sample.labels == findings_to_labels(sample.findings) == frame.loc[sample.id].to_dict()
        assert set(sample.masks) == {f.name for f in sample.findings}
        assert sample.sections == {"FINDINGS": sample.report}
        assert sample.meta["split"] == "val" and sample.meta["report_id"] == sample.id


def test_disk_cache_hit_returns_identical_images_and_leaves_no_temp_files(tmp_path, monkeypatch) -> None:
    ds = PhantomCXR("test", text="templated", image_size=64, cache_dir=tmp_path, max_samples=3)
    first = [ds[i] for i in range(3)]
    files = list(ds.cache_dir.iterdir())
    assert len(files) == 3 and all(f.suffix == ".npz" for f in files)

    def no_render(*args, **kwargs):
        raise AssertionError("rendered although the cache holds the sample")

    monkeypatch.setattr(phantom_module, "render_phantom", no_render)
    reopened = PhantomCXR("test", text="templated", image_size=64, cache_dir=tmp_path, max_samples=3)
    for cached, fresh in zip((reopened[i] for i in range(3)), first):
        assert np.array_equal(np.asarray(cached.images[0]), np.asarray(fresh.images[0]))
        assert cached.masks.keys() == fresh.masks.keys()
        assert all(np.array_equal(cached.masks[k], fresh.masks[k]) for k in fresh.masks)


def test_failed_cache_write_leaves_nothing_behind(tmp_path, monkeypatch) -> None:
    def broken_savez(file, **arrays):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(phantom_module.np, "savez_compressed", broken_savez)
    ds = PhantomCXR("test", text="templated", image_size=64, cache_dir=tmp_path, max_samples=1)
    with pytest.raises(OSError, match="disk full"):
        ds[0]
    assert list(ds.cache_dir.iterdir()) == []


def test_corrupt_cache_entry_is_rendered_again(tmp_path) -> None:
    ds = PhantomCXR("test", text="templated", image_size=64, cache_dir=tmp_path, max_samples=1)
    expected = np.asarray(ds[0].images[0])
    ds.cache_path(0).write_bytes(b"not an npz")
    assert np.array_equal(np.asarray(ds[0].images[0]), expected)
    assert np.array_equal(np.asarray(ds[0].images[0]), expected)  # and the entry was repaired


def test_cache_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FLAMINGO_CACHE_DIR", str(tmp_path))
    ds = PhantomCXR("test", text="templated", image_size=64, max_samples=1)
    assert ds.cache_dir.parent == tmp_path / "phantom"
