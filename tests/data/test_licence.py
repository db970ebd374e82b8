"""Whether samples may be shared: the origin a loader knows, the licence a spec declares, and
private when neither says."""

from __future__ import annotations

import json

import pytest

from data_fixtures import build_r2gen, write_image
from flamingo_lib.data.datasets.chex import ChexDataset, CredentialedExportError, write_chex
from flamingo_lib.data.errors import DataError
from flamingo_lib.data.phantom.dataset import PhantomCXR
from flamingo_lib.data.sources import open_source


def _r2gen_with_flat_paths(root, **extra):
    """R2Gen entries whose paths name no known layout (MIMIC films renamed flat, say)."""
    entry = {"id": "a", "report": "lungs clear .", "image_path": ["a.jpg"], **extra}
    write_image(root / "images" / "a.jpg", 3)
    (root / "annotation.json").write_text(json.dumps({"train": [entry], "val": [], "test": []}))
    return root / "annotation.json"


def test_an_r2gen_file_of_unknown_origin_is_private_until_its_licence_is_declared(tmp_path):
    path = _r2gen_with_flat_paths(tmp_path)
    (unknown,) = open_source(f"r2gen:{path},{tmp_path / 'images'}", "train")
    assert unknown.meta["credentialed"] is True and "unknown origin" in unknown.meta["licence"]
    (declared,) = open_source(f"r2gen:{path},{tmp_path / 'images'};licence=open", "train")
    assert declared.meta["credentialed"] is False and declared.meta["licence"] == "open: declared in the data spec"
    iu = open_source(f"r2gen:{build_r2gen(tmp_path / 'iu')},{tmp_path / 'iu' / 'images'}", "train")[0]
    assert iu.meta["credentialed"] is False and iu.meta["licence"] == "open: IU X-Ray, CC BY-NC-ND 4.0"  # its layout is known


def test_a_declared_open_licence_never_opens_data_known_to_be_credentialed(tmp_path):
    root = tmp_path / "mimic"
    path = build_r2gen(root, mimic=True)
    (sample,) = open_source(f"r2gen:{path},{root / 'images'};licence=open", "train")
    assert sample.meta["credentialed"] is True and sample.meta["licence"] == "credentialed: MIMIC-CXR, under PhysioNet's data use agreement"
    flat = _r2gen_with_flat_paths(tmp_path, subject_id=10000032)  # MIMIC's keys, flat paths
    assert open_source(f"r2gen:{flat},{tmp_path / 'images'};licence=open", "train")[0].meta["credentialed"] is True


def test_a_chex_file_without_meta_is_private_and_cannot_be_exported_or_reported_without_opting_in(tmp_path):
    write_image(tmp_path / "a.png", 7)
    data = {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"id": 1, "image_id": 1, "caption": "Clear."}]}
    (tmp_path / "foreign.json").write_text(json.dumps(data))
    (sample,) = open_source(f"chex:{tmp_path / 'foreign.json'}", "test")
    assert sample.meta["credentialed"] is True
    with pytest.raises(CredentialedExportError):
        write_chex([sample], tmp_path / "export")
    (declared,) = open_source(f"chex:{tmp_path / 'foreign.json'};licence=open", "test")
    assert declared.meta["credentialed"] is False
    (private,) = ChexDataset(tmp_path / "foreign.json", licence="credentialed")
    assert private.meta["credentialed"] is True and private.meta["licence"] == "credentialed: declared in the data spec"


def test_our_own_export_records_the_licence_and_a_mistyped_one_is_a_data_error(tmp_path):
    phantom = PhantomCXR(split="test", image_size=64, max_samples=2)
    path = write_chex(phantom, tmp_path / "out")
    assert [s.meta["credentialed"] for s in ChexDataset(path)] == [False, False]  # read back open, undeclared
    data = json.loads(path.read_text())
    data["images"][0]["meta"]["credentialed"] = "false"  # a string must not read as shareable
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"image id 1\.meta\.credentialed.*must be true or false"):
        ChexDataset(path)
    assert len(ChexDataset(path, on_error="skip")) == 1


@pytest.mark.parametrize("spec, message", [
    ("chex:a.json;licence=free", "licence must be one of open, credentialed"),
    ("chex:a.json;owner=me", "the only option after ';' is licence"),
    ("mimic:/data/mimic;licence=open", "mimic data have a known licence"),
    ("phantom;licence=open", "phantom data have a known licence"),
])
def test_a_bad_licence_declaration_is_refused_by_name(spec, message):
    with pytest.raises(ValueError, match=message):
        open_source(spec, "train")
