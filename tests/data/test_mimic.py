import gzip
import logging
import re
import time
from pathlib import Path

import numpy as np
import pytest

import flamingo_lib.data.datasets.mimic as mimic_module
from data_fixtures import METADATA_COLUMNS, Study, build_mimic, mimic_report, write_csv
from flamingo_lib.data.errors import DataError
from flamingo_lib.data.datasets.mimic import MimicCXR
from flamingo_lib.data.sources import open_source
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


# --- indications ----------------------------------------------------------------------------


def test_indication_comes_from_the_reports_indication_section_never_its_findings(tmp_path):
    sample = MimicCXR(build_mimic(tmp_path))[0]
    assert sample.indication == "___F with cough" == sample.sections["INDICATION"]
    assert "lungs" not in sample.indication and "acute" not in sample.indication


def test_indication_falls_back_to_history_when_the_report_has_no_indication(tmp_path):
    report = "\n".join([" HISTORY:  ___M with fever", "", " FINDINGS: ", "", " Right lower lobe opacity.", "",
                        " IMPRESSION: ", "", " Pneumonia.", ""])  # fmt: skip
    root = build_mimic(tmp_path, [Study("10000032", "50000001", "train", [("d1", "PA", 40)], report=report)])
    (sample,) = MimicCXR(root)
    assert sample.indication == "___M with fever"
    assert "opacity" not in sample.indication.lower() and "pneumonia" not in sample.indication.lower()


# --- prior studies --------------------------------------------------------------------------


def findings_report(text: str) -> str:
    return mimic_report(findings=text, impression="Unchanged.")


def prior_studies() -> list[Study]:
    """Subjects whose study ids do not follow their dates, so only StudyDate/StudyTime can order them.

    13000013: three studies; two on 2180-01-01, at 09:30:12 ("93012", which sorts after
        "142345.123" as text) and 14:23:45.123, then one on 2180-03-15.
    14000014: two studies without StudyDate or StudyTime.
    15000015: a train study whose prior is in the validate split, then a test-split study without a
        report (not loadable: passed over), then a train study.
    16000016: two studies on one day without times (order unknown), then a later one.
    """
    return [
        Study("13000013", "53000002", "train", [("a3-ap", "AP", 33)], report=findings_report("Third."),
              date="21800315", time="80000"),
        Study("13000013", "53000001", "train", [("a2-pa", "PA", 32)], report=findings_report("Second."),
              date="21800101", time="142345.123"),
        Study("13000013", "53000003", "train", [("a1-lat", "LATERAL", 41), ("a1-pa", "PA", 31)],
              report=findings_report("First."), date="21800101", time="93012"),
        Study("14000014", "54000002", "train", [("c2-pa", "PA", 52)], date="", time=""),
        Study("14000014", "54000001", "train", [("c1-pa", "PA", 51)], date="", time=""),
        Study("15000015", "55000001", "validate", [("v1-pa", "PA", 61)], report=findings_report("Validate one."),
              date="21790101"),
        Study("15000015", "55000002", "train", [("v2-pa", "PA", 62)], report=findings_report("Train two."),
              date="21790202"),
        Study("15000015", "55000004", "test", [("v4-pa", "PA", 64)], report=None, date="21790215"),
        Study("15000015", "55000003", "train", [("v3-pa", "PA", 63)], date="21790301"),
        Study("16000016", "56000001", "train", [("t1-pa", "PA", 71)], date="21800101", time=""),
        Study("16000016", "56000002", "train", [("t2-pa", "PA", 72)], date="21800101", time=""),
        Study("16000016", "56000003", "train", [("t3-pa", "PA", 73)], date="21800201"),
    ]  # fmt: skip


EXPECTED_PRIORS = {  # study -> its prior study (None: no earlier study, or the order is not known)
    "53000003": None, "53000001": "53000003", "53000002": "53000001",
    "54000001": None, "54000002": None,
    "55000002": "55000001", "55000003": "55000002",
    "56000001": None, "56000002": None, "56000003": None,
}  # fmt: skip


@pytest.fixture
def decodes(monkeypatch):
    """The paths of every film decoded through the MIMIC reader, in order."""
    decoded: list[str] = []
    real = mimic_module.load_image
    monkeypatch.setattr(mimic_module, "load_image", lambda path, *a, **k: decoded.append(Path(path).name) or
                        real(path, *a, **k))  # fmt: skip
    return decoded


@pytest.mark.parametrize("per_study", [False, True], ids=["per image", "per study"])
def test_each_prior_is_the_subjects_latest_earlier_study_by_date_then_time(tmp_path, per_study):
    dataset = MimicCXR(build_mimic(tmp_path, prior_studies()), priors=True, all_views_per_study=per_study)
    samples = list(dataset)
    assert sorted(s.meta["study_id"] for s in samples) == sorted(EXPECTED_PRIORS)
    for sample in samples:
        expected = EXPECTED_PRIORS[sample.meta["study_id"]]
        assert sample.meta["prior_study_id"] == expected, sample.meta["study_id"]
        assert (sample.prior.meta["study_id"] if sample.prior else None) == expected
        if sample.prior is not None:
            assert sample.prior.prior is None and sample.prior.meta["subject_id"] == sample.meta["subject_id"]
            assert "prior_study_id" not in sample.prior.meta  # not looked up: one study back only


def test_the_prior_sample_holds_the_prior_studys_report_and_films(tmp_path):
    root = build_mimic(tmp_path, prior_studies())
    per_study = {s.meta["study_id"]: s for s in MimicCXR(root, views=None, all_views_per_study=True, priors=True)}
    prior = per_study["53000001"].prior
    assert prior.id == "53000003" and prior.report == "First." and prior.indication == "___F with cough"
    assert prior.views == ["PA", "LATERAL"] and [pixel(image) for image in prior.images] == [31, 41]
    assert prior.meta["report_path"] == str(root / "files/p13/p13000013/s53000003.txt")
    assert prior.meta["study_datetime"] == "2180-01-01T09:30:12"
    assert per_study["53000001"].meta["study_datetime"] == "2180-01-01T14:23:45.123000"
    assert per_study["54000001"].meta["study_datetime"] is None
    assert per_study["55000002"].prior.report == "Validate one."  # from another split
    # One film per sample: the prior of an image is its study's best view, built at the same size.
    per_image = {s.id: s for s in MimicCXR(root, views=None, priors=True, image_size=10)}
    prior = per_image["a2-pa"].prior
    assert prior.id == "a1-pa" and prior.views == ["PA"] and pixel(prior.images[0]) == 31
    assert max(prior.images[0].size) == 10
    assert per_image["a3-ap"].prior.report == "Second."


def test_priors_decode_no_film_at_construction_or_in_the_text_accessors(tmp_path, decodes):
    dataset = MimicCXR(build_mimic(tmp_path, prior_studies()), priors=True, all_views_per_study=True, views=None)
    reports, counts = dataset.reports, dataset.image_counts
    dataset.label_frame()
    assert decodes == [] and len(reports) == len(counts) == len(dataset) == 10
    index = next(i for i in range(len(dataset)) if dataset._entries[i].study_id == "53000001")
    sample = dataset[index]
    assert decodes == ["a2-pa.jpg", "a1-pa.jpg", "a1-lat.jpg"]  # the sample's films, then its prior's
    assert sample.prior.report == "First."


def test_priors_off_leave_samples_as_they_were(tmp_path):
    sample = MimicCXR(build_mimic(tmp_path, prior_studies()))[1]
    assert sample.prior is None and "prior_study_id" not in sample.meta and "study_datetime" not in sample.meta


@pytest.mark.parametrize("column, value, reason, message", [
    ("date", "2180-01-01", "bad_study_date", r"column 'StudyDate': invalid StudyDate: not eight digits "
                                             r"\(expected YYYYMMDD, e\.g\. 21800506, got '2180-01-01'\)"),
    ("date", "21801301", "bad_study_date", r"month must be in 1\.\.12 \(expected YYYYMMDD"),
    ("time", "256000", "bad_study_time", r"column 'StudyTime': invalid StudyTime: hour must be in 0\.\.23 "
                                         r"\(expected HHMMSS\[\.fff\].*got '256000'\)"),
    ("time", "9:30", "bad_study_time", r"not a number HHMMSS"),
])  # fmt: skip
def test_a_bad_study_date_or_time_names_file_study_and_column_or_is_skipped(tmp_path, column, value, reason, message):
    studies = prior_studies()
    setattr(studies[1], column, value)  # 53000001, the middle study of 13000013
    root = build_mimic(tmp_path, studies)
    with pytest.raises(DataError, match=re.escape(f"metadata.csv.gz (study_id 53000001)") + ".*" + message) as caught:
        MimicCXR(root, priors=True)
    assert caught.value.reason == reason
    dataset = MimicCXR(root, priors=True, on_error="skip")
    assert dict(dataset.skip_log.counts) == {reason: 1}
    by_study = {s.meta["study_id"]: s.meta["prior_study_id"] for s in dataset}
    # Left out, and its subject's order is no longer known: an undated study could lie anywhere.
    assert "53000001" not in by_study and by_study["53000002"] is None and by_study["53000003"] is None
    assert len(MimicCXR(root)) == 10  # without priors the dates are not read


def test_a_bad_date_in_another_split_only_leaves_that_order_unknown(tmp_path):
    studies = prior_studies()
    studies[5].date = "not-a-date"  # 55000001, validate split
    by_study = {s.meta["study_id"]: s.meta["prior_study_id"] for s in MimicCXR(build_mimic(tmp_path, studies),
                                                                               priors=True)}  # fmt: skip
    assert by_study["55000002"] is None and by_study["55000003"] is None and by_study["53000002"] == "53000001"


def test_construction_with_priors_scales_linearly(tmp_path, monkeypatch):
    """40,000 studies (MIMIC has ~228k) construct with their priors in about a second: files are not
    the point here, so report and film checks are stubbed."""
    n_subjects, per_subject = 10_000, 4
    studies = [Study(f"1{s:07d}", f"5{s:05d}{k:02d}", "train", [(f"d{s}-{k}", "PA", 1)],
                     date=f"2180{1 + k:02d}01", time=f"{9 + k}0000")
               for s in range(n_subjects) for k in range(per_subject)]  # fmt: skip
    rows = [(st.images[0][0], st.subject_id, st.study_id, "", "PA", 16, 20, st.date, st.time, "", "", "")
            for st in studies]  # fmt: skip
    write_csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv", METADATA_COLUMNS, rows, gz=False)
    write_csv(tmp_path / "mimic-cxr-2.0.0-split.csv", ("dicom_id", "study_id", "subject_id", "split"),
              [(r[0], r[2], r[1], "train") for r in rows], gz=False)  # fmt: skip
    monkeypatch.setattr(MimicCXR, "_read_report", lambda self, subject, study: {"FINDINGS": "x"})
    monkeypatch.setattr(mimic_module, "check_image_file", lambda path, open_header=False: None)
    start = time.perf_counter()
    dataset = MimicCXR(tmp_path, priors=True)
    elapsed = time.perf_counter() - start
    assert len(dataset) == n_subjects * per_subject and len(dataset._prior_of) == n_subjects * (per_subject - 1)
    assert dataset._prior_of["50000003"] == "50000002"
    assert elapsed < 10, f"{elapsed:.1f} s for {len(dataset)} studies"  # ~1 s here; per-study table scans take minutes


# --- the data spec --------------------------------------------------------------------------


def test_the_mimic_spec_takes_priors_and_nothing_changes_without_it(tmp_path):
    root = build_mimic(tmp_path, prior_studies())
    with_priors = {s.meta["study_id"]: s for s in open_source(f"mimic:{root};priors=true", "train", None)}
    assert with_priors["53000002"].prior.id == "a2-pa"
    plain = list(open_source(f"mimic:{root}", "train", None))
    assert [s.id for s in plain] == [s.id for s in open_source(f"mimic:{root};priors=false", "train", None)]
    assert all(s.prior is None and "prior_study_id" not in s.meta for s in plain)
    assert [s.id for s in plain] == [s.id for s in with_priors.values()]


@pytest.mark.parametrize("spec, message", [
    ("mimic:/data/mimic;priors=maybe", "priors must be true or false, got 'maybe'"),
    ("mimic:/data/mimic;priors=true;priors=false", "option 'priors' given twice"),
    ("mimic:/data/mimic;prior=true", r"the only option after ';' is priors=true\|false"),
    ("iu:/a,/b;priors=true", "iu takes no option after ';'"),
    ("chex:a.json;priors=true", "the only option after ';' is licence"),
])  # fmt: skip
def test_a_bad_priors_option_is_refused_by_name(spec, message):
    with pytest.raises(ValueError, match=message):
        open_source(spec, "train")
