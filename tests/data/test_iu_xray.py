import json
import re

import numpy as np
import pytest

from data_fixtures import build_iu, build_r2gen, openi_xml
from flamingo_lib.data.errors import DataError
from flamingo_lib.data.datasets.iu_xray import IUXray, R2GenAnnotation, hash_split, parse_mesh_major
from flamingo_lib.data.sample import Finding


def pixel(image) -> int:
    return int(round(float(np.asarray(image).mean())))


def test_openi_xml_reports_load_with_sections_images_and_mesh_findings(tmp_path):
    xml_dir, image_dir = build_iu(tmp_path)
    dataset = IUXray(xml_dir, image_dir, on_error="skip")
    first, second = list(dataset)
    assert first.id == "CXR1" and first.report == "Heart size normal. Lungs clear."
    assert first.sections["IMPRESSION"] == "Normal chest." and first.sections["COMPARISON"] == "None."
    assert [pixel(image) for image in first.images] == [100, 101]
    assert first.views == ["UNKNOWN", "UNKNOWN"] and first.findings == []
    assert first.meta["image_ids"] == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]
    assert first.meta["credentialed"] is False
    assert second.report == "Mild XXXX cardiomegaly." and "FINDINGS" not in second.sections
    assert second.findings == [
        Finding("cardiomegaly", severity="mild", source="Cardiomegaly/mild"),
        Finding("pulmonary atelectasis", side="left", zone="base", source="Pulmonary Atelectasis/base/left"),
    ]


def test_report_without_findings_or_impression_raises_naming_its_xml(tmp_path):
    xml_dir, image_dir = build_iu(tmp_path)
    with pytest.raises(DataError, match=re.escape(str(xml_dir / "10.xml"))) as caught:
        IUXray(xml_dir, image_dir)
    assert caught.value.reason == "no_target_section"


@pytest.mark.parametrize(
    ("reason", "breakage"),
    [
        ("missing_image", lambda xml, img: (img / "CXR2_1_IM-0652-1001.png").unlink()),
        ("bad_xml", lambda xml, img: (xml / "2.xml").write_text("<eCitation><uId id='CXR2'/>")),
        ("no_images", lambda xml, img: (xml / "2.xml").write_text(openi_xml("CXR2", "Clear.", None, [], []))),
    ],
)
def test_bad_reports_raise_or_are_skipped_and_counted(tmp_path, reason, breakage):
    xml_dir, image_dir = build_iu(tmp_path)
    (xml_dir / "10.xml").unlink()  # the fixture's always-bad report
    breakage(xml_dir, image_dir)
    with pytest.raises(DataError, match="CXR2_1_IM-0652-1001.png|2.xml") as caught:
        IUXray(xml_dir, image_dir)
    assert caught.value.reason == reason
    dataset = IUXray(xml_dir, image_dir, on_error="skip")
    assert [s.id for s in dataset] == ["CXR1"]
    assert dataset.skip_log.summary().endswith(f"skipped 1 item(s): {reason}=1")


def test_split_uses_the_callers_assignment_function(tmp_path):
    xml_dir, image_dir = build_iu(tmp_path)
    dataset = IUXray(xml_dir, image_dir, split="test", assign_split=lambda uid: "test" if uid == "CXR2" else "train")
    assert [s.id for s in dataset] == ["CXR2"]


def test_hash_split_is_deterministic_and_roughly_proportional():
    splits = [hash_split(f"CXR{i}") for i in range(2000)]
    assert splits == [hash_split(f"CXR{i}") for i in range(2000)]
    assert 0.65 < splits.count("train") / 2000 < 0.75 and 0.07 < splits.count("val") / 2000 < 0.13


def test_mesh_normal_is_no_finding():
    assert parse_mesh_major("normal") is None
    assert parse_mesh_major("Opacity/lung/upper lobe/right").side == "right"


def test_r2gen_iu_annotation_loads_images_and_report_per_split(tmp_path):
    path = build_r2gen(tmp_path)
    (sample,) = list(R2GenAnnotation(path, tmp_path / "images", split="train"))
    assert sample.id == "CXR1_1_IM-0001" and sample.report == "heart size normal . lungs clear ."
    assert sample.sections == {"FINDINGS": sample.report}
    assert [pixel(image) for image in sample.images] == [50, 51]
    assert sample.meta["credentialed"] is False
    assert [s.id for s in R2GenAnnotation(path, tmp_path / "images", split="validate")] == ["v"]
    assert len(R2GenAnnotation(path, tmp_path / "images", split="test")) == 0


def test_r2gen_mimic_annotation_is_marked_credentialed(tmp_path):
    path = build_r2gen(tmp_path, mimic=True)
    sample = R2GenAnnotation(path, tmp_path / "images")[0]
    assert sample.meta["credentialed"] is True and sample.meta["study_id"] == 50000001
    assert sample.report == "lungs clear ."


def test_r2gen_bad_entries_raise_naming_file_and_entry_or_are_skipped(tmp_path):
    path = build_r2gen(tmp_path)
    data = json.loads(path.read_text())
    data["train"].append({"id": "x", "report": "", "image_path": ["CXR1_1_IM-0001/0.png"]})
    data["train"].append({"id": "y", "report": "ok", "image_path": ["missing.png"]})
    data["train"].append({"id": "z", "image_path": []})
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=re.escape(f"{path} [train][1].report")):
        R2GenAnnotation(path, tmp_path / "images")
    dataset = R2GenAnnotation(path, tmp_path / "images", on_error="skip")
    assert len(dataset) == 1
    assert dict(dataset.skip_log.counts) == {"empty_report": 1, "missing_image": 1, "bad_entry": 1}


def test_r2gen_file_without_the_split_raises_even_in_skip_mode(tmp_path):
    path = tmp_path / "annotation.json"
    path.write_text(json.dumps({"train": []}))
    with pytest.raises(DataError, match="no list under key 'test'"):
        R2GenAnnotation(path, tmp_path, split="test", on_error="skip")
    with pytest.raises(ValueError, match="unknown R2Gen split"):
        R2GenAnnotation(path, tmp_path, split="dev")


def test_an_r2gen_image_path_leading_out_of_the_image_root_is_refused(tmp_path):
    path = build_r2gen(tmp_path)
    data = json.loads(path.read_text())
    data["train"][0]["image_path"] = ["../annotation.json"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"\.image_path: the image path leads outside the dataset folder"):
        R2GenAnnotation(path, tmp_path / "images")
    data["train"][0]["image_path"] = [5]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"an image path must be a non-empty string"):
        R2GenAnnotation(path, tmp_path / "images")


def test_indication_comes_from_the_reports_indication_and_an_iu_sample_has_no_prior(tmp_path):
    xml_dir, image_dir = build_iu(tmp_path)
    first, second = list(IUXray(xml_dir, image_dir, on_error="skip"))
    assert first.indication == "Synthetic cough." == first.sections["INDICATION"]
    assert second.indication == "Synthetic cough."
    for sample in (first, second):
        assert sample.prior is None  # one study per patient
        for text in (sample.sections.get("FINDINGS"), sample.sections.get("IMPRESSION")):
            assert not text or text not in sample.indication
