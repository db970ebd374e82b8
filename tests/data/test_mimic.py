import gzip
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from data_fixtures import Study, build_mimic, mimic_report, write_csv
from flamingo_lib.data.errors import DataError
from flamingo_lib.data.datasets.mimic import MimicCXR
from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS

STUDY_DIR = Path("files/p10/p10000032")


def pixel(image) -> int:
    return int(round(float(np.asarray(image).mean())))


@pytest.mark.parametrize("gz", [True, False], ids=["csv.gz", "csv"])
def test_layout_loads_one_frontal_sample_per_image(tmp_path, gz):
    dataset = MimicCXR(build_mimic(tmp_path, gz=gz), split="train")
    assert [s.id for s in dataset] == ["d02-pa", "d03-ap"]
    sample = dataset[0]
    assert sample.views == ["PA"] and pixel(sample.images[0]) == 12
    assert sample.report == "The lungs are clear."
    assert sample.sections["IMPRESSION"] == "No acute process."


def test_split_filter_accepts_val_alias_and_rejects_unknown_split(tmp_path):
    root = build_mimic(tmp_path)
    assert [s.id for s in MimicCXR(root, split="val")] == ["c06-pa", "b05-ap"]
    assert [s.id for s in MimicCXR(root, split="test")] == ["d07-pa"]
    assert len(MimicCXR(root, split=None)) == 5
    with pytest.raises(ValueError, match="validate"):
        MimicCXR(root, split="dev")


def test_view_filter_keeps_only_requested_positions(tmp_path):
    root = build_mimic(tmp_path)
    assert [s.id for s in MimicCXR(root, views=("lateral",))] == ["d01-lat"]
    assert [s.views[0] for s in MimicCXR(root, views=None)] == ["PA", "LATERAL", "AP"]


def test_unknown_view_names_raise_listing_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"\['OBLIQUE'\].*'PA', 'AP'"):
        MimicCXR(build_mimic(tmp_path), views=("PA", "OBLIQUE"))


def test_blank_view_position_is_kept_as_unknown(tmp_path):
    root = build_mimic(tmp_path, [Study("10000032", "50000001", "train", [("d1", "", 40)])])
    assert MimicCXR(root, views=None)[0].views == ["UNKNOWN"]
    assert len(MimicCXR(root)) == 0


def test_study_mode_holds_all_views_frontal_first_pa_before_ap(tmp_path):
    dataset = MimicCXR(build_mimic(tmp_path), split="validate", views=None, all_views_per_study=True)
    (sample,) = list(dataset)
    assert sample.id == "51000001"
    assert sample.views == ["PA", "AP", "LL"]
    assert [pixel(image) for image in sample.images] == [16, 15, 14]
    assert sample.meta["dicom_ids"] == ["c06-pa", "b05-ap", "a04-ll"]


def test_labels_parse_values_and_blank_cells_as_none(tmp_path):
    by_study = {s.meta["study_id"]: s.labels for s in MimicCXR(build_mimic(tmp_path), split=None, views=None)}
    assert set(by_study["50000001"]) == set(CHEXPERT_OBSERVATIONS)
    assert by_study["50000001"]["No Finding"] == 1.0 and by_study["50000001"]["Cardiomegaly"] == 0.0
    assert by_study["50000001"]["Edema"] is None
    assert by_study["50000002"]["Pleural Effusion"] == -1.0
    assert all(value is None for value in by_study["52000001"].values())  # no label row at all


def test_report_falls_back_to_impression_and_meta_is_complete_and_credentialed(tmp_path):
    root = build_mimic(tmp_path)
    sample = MimicCXR(root)[1]
    assert sample.report == "Small left effusion." and "FINDINGS" not in sample.sections
    assert sample.meta["credentialed"] is True
    assert sample.meta["subject_id"] == "10000032" and sample.meta["study_id"] == "50000002"
    assert sample.meta["dicom_ids"] == ["d03-ap"] and sample.meta["StudyDate"] == "21800506"
    assert sample.meta["paths"] == [str(root / STUDY_DIR / "s50000002" / "d03-ap.jpg")]


def test_image_size_downscales_on_load(tmp_path):
    assert max(MimicCXR(build_mimic(tmp_path), image_size=10)[0].images[0].size) == 10


# Each case breaks the default tree in one way: (reason, file the error must name, breakage).
def _rm(path):
    return lambda root: (root / path).unlink()


def _write(path, text):
    return lambda root: (root / path).write_text(text)


def _extra_label_row(root):
    path = root / "mimic-cxr-2.0.0-chexpert.csv.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + b"19000000,59000000" + b",1.0" * 14 + b"\n"))


def _bad_label_cell(root):
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", ("subject_id", "study_id", *CHEXPERT_OBSERVATIONS),
              [("10000032", "50000002", "yes", *[""] * 13)], gz=True)  # fmt: skip


BAD_INPUTS = {
    "missing_report": ("missing_report", STUDY_DIR / "s50000002.txt", _rm(STUDY_DIR / "s50000002.txt")),
    "empty_report": ("empty_report", STUDY_DIR / "s50000002.txt", _write(STUDY_DIR / "s50000002.txt", " \n")),
    "no_target_section": (
        "no_target_section", STUDY_DIR / "s50000002.txt",
        _write(STUDY_DIR / "s50000002.txt", mimic_report(findings=None, impression=None)),
    ),
    "missing_image": ("missing_image", STUDY_DIR / "s50000002/d03-ap.jpg", _rm(STUDY_DIR / "s50000002/d03-ap.jpg")),
    "label_without_images": ("label_without_images", "mimic-cxr-2.0.0-chexpert.csv.gz", _extra_label_row),
    "bad_label": ("bad_label", "mimic-cxr-2.0.0-chexpert.csv.gz", _bad_label_cell),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_data_error_naming_the_file(tmp_path, case):
    reason, culprit, breakage = BAD_INPUTS[case]
    root = build_mimic(tmp_path)
    breakage(root)
    with pytest.raises(DataError, match=re.escape(str(root / culprit))) as caught:
        MimicCXR(root)
    assert caught.value.reason == reason


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_skipped_and_counted_in_skip_mode(tmp_path, caplog, case):
    reason, _, breakage = BAD_INPUTS[case]
    root = build_mimic(tmp_path)
    breakage(root)
    with caplog.at_level(logging.WARNING, logger="flamingo_lib.data.errors"):
        dataset = MimicCXR(root, on_error="skip")
    expected_ids = ["d02-pa"] if reason != "label_without_images" else ["d02-pa", "d03-ap"]
    assert [s.id for s in dataset] == expected_ids
    assert dict(dataset.skip_log.counts) == {reason: 1}
    assert f"skipped 1 item(s): {reason}=1" in caplog.text


def test_corrupt_image_is_caught_at_construction_when_validating_headers(tmp_path):
    root = build_mimic(tmp_path)
    (root / STUDY_DIR / "s50000002" / "d03-ap.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="d03-ap.jpg"):
        MimicCXR(root, validate_images=True)
    assert [s.id for s in MimicCXR(root, validate_images=True, on_error="skip")] == ["d02-pa"]


def test_corrupt_image_found_lazily_never_stops_an_epoch_in_skip_mode(tmp_path):
    root = build_mimic(tmp_path)
    (root / STUDY_DIR / "s50000001" / "d02-pa.jpg").write_bytes(b"\xff\xd8 truncated")
    dataset = MimicCXR(root, on_error="skip")
    assert len(dataset) == 2  # headers not validated: the index still holds it
    assert dataset[0].id == "d03-ap"  # indexing substitutes the next good sample
    assert [s.id for s in dataset] == ["d03-ap"]  # iterating leaves it out
    assert dataset.skip_log.counts["corrupt_image"] == 2
    with pytest.raises(DataError, match="d02-pa.jpg"):
        MimicCXR(root)[0]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_broken_index_files_raise_whatever_the_policy(tmp_path, on_error):
    root = build_mimic(tmp_path)
    write_csv(root / "mimic-cxr-2.0.0-split.csv", ("dicom_id", "fold"), [("d02-pa", "1")], gz=True)
    with pytest.raises(DataError, match=r"split\.csv\.gz: missing columns \['split'\]"):
        MimicCXR(root, on_error=on_error)
    (root / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    with pytest.raises(DataError, match="metadata.csv"):
        MimicCXR(root, on_error=on_error)
