import json

import numpy as np
import pytest
from PIL import Image

from data_fixtures import build_mimic, write_image
from flamingo_lib.data.datasets.chex import ChexDataset, CredentialedExportError, write_chex
from flamingo_lib.data.errors import DataError
from flamingo_lib.data.datasets.mimic import MimicCXR
from flamingo_lib.data.sample import CXRSample, Finding

# Keys the reader adds (where the files now are); everything else must round-trip.
READER_META = {"paths", "chex_annotation", "chex_image_id", "captions"}


def make_samples() -> list[CXRSample]:
    rng = np.random.default_rng(0)
    mask = np.zeros((24, 32), dtype=bool)
    mask[5:15, 4:12] = True
    frontal = Image.fromarray(rng.integers(0, 256, (24, 32), dtype=np.uint8))
    lateral = Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8))
    return [
        CXRSample(
            id="study/1", images=[frontal, lateral], report="Small right effusion.",
            sections={"FINDINGS": "Small right effusion.", "IMPRESSION": "Effusion."},
            findings=[Finding("pleural effusion", side="right", severity="small", source="Effusion/right/small")],
            labels={"Pleural Effusion": 1.0, "Edema": None, "Cardiomegaly": -1.0},
            masks={"Pleural Effusion": mask}, views=["PA", "LATERAL"],
            meta={"source": "phantom", "seed": np.int64(3), "tags": ("a", "b"), "credentialed": False},
        ),
        CXRSample(id="2", images=[frontal.copy()], report="Clear lungs.", sections={"FINDINGS": "Clear lungs."}),
    ]  # fmt: skip


def assert_same(read: CXRSample, original: CXRSample) -> None:
    assert (read.id, read.report, read.sections) == (original.id, original.report, original.sections)
    assert (read.findings, read.labels, read.views) == (original.findings, original.labels, original.views)
    assert len(read.images) == len(original.images)
    for got, want in zip(read.images, original.images, strict=True):
        assert got.mode == want.mode and np.array_equal(np.asarray(got), np.asarray(want))
    assert read.masks.keys() == original.masks.keys()
    assert all(np.array_equal(read.masks[k], original.masks[k]) for k in original.masks)


def test_export_then_read_back_gives_equal_samples(tmp_path):
    samples = make_samples()
    samples[1].views = ["UNKNOWN"]  # the reader's default when no views were stored
    path = write_chex(samples, tmp_path / "out")
    assert path == tmp_path / "out" / "annotations.json"
    read = list(ChexDataset(path))
    for got, want in zip(read, samples, strict=True):
        assert_same(got, want)
    meta = {k: v for k, v in read[0].meta.items() if k not in READER_META}
    assert meta == {"source": "phantom", "seed": 3, "tags": ["a", "b"], "credentialed": False, "licence": "open"}
    assert read[1].meta["credentialed"] is True  # of unknown origin: private


def test_reader_builds_coco_indexes(tmp_path):
    dataset = ChexDataset(write_chex(make_samples(), tmp_path))
    assert set(dataset.imgs) == {1, 2} and set(dataset.anns) == {1, 2}
    assert [ann["caption"] for ann in dataset.imgToAnns[1]] == ["Small right effusion."]
    assert dataset.imgs[1]["file_name"] == "images/000001_study-1_0.png"


def test_foreign_coco_caption_file_loads_first_caption_as_report(tmp_path):
    write_image(tmp_path / "imgs" / "a.png", 7)
    data = {"images": [{"id": 5, "file_name": "a.png"}],
            "annotations": [{"id": 9, "image_id": 5, "caption": "First."}, {"id": 10, "image_id": 5, "caption": "2nd."}]}
    (tmp_path / "chex.json").write_text(json.dumps(data))
    (sample,) = list(ChexDataset(tmp_path / "chex.json", tmp_path / "imgs"))
    assert (sample.id, sample.report, sample.sections) == ("5", "First.", {"FINDINGS": "First."})
    assert sample.meta["captions"] == ["First.", "2nd."] and sample.views == ["UNKNOWN"]


def test_bad_entries_raise_naming_the_json_or_are_skipped_and_counted(tmp_path):
    write_image(tmp_path / "a.png", 7)
    data = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "gone.png"},
                   {"id": 3, "file_name": "a.png"}, {"id": 1, "file_name": "a.png"}],
        "annotations": [{"id": 1, "image_id": 1, "caption": "Ok."}, {"id": 2, "image_id": 2, "caption": "Ok."},
                        {"id": 3, "image_id": 3, "caption": "  "}, {"id": 4, "image_id": 99, "caption": "Orphan."}],
    }  # fmt: skip
    path = tmp_path / "chex.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"chex\.json images\[3\]\.id: image id used twice"):
        ChexDataset(path)
    dataset = ChexDataset(path, on_error="skip")
    assert [s.report for s in dataset] == ["Ok."]
    expected = {"duplicate_id": 1, "annotation_without_image": 1, "no_caption": 1, "missing_image": 1}
    assert dict(dataset.skip_log.counts) == expected


def test_credentialed_samples_are_refused_without_the_flag_and_nothing_is_left(tmp_path):
    mimic = MimicCXR(build_mimic(tmp_path / "mimic"))
    out = tmp_path / "out"
    with pytest.raises(CredentialedExportError, match="data use agreement"):
        write_chex([*make_samples(), *mimic], out)
    assert not (out / "annotations.json").exists()
    assert list((out / "images").iterdir()) == []  # the public samples' images were removed again
    path = write_chex(mimic, out, allow_credentialed=True)
    assert all(sample.meta["credentialed"] for sample in ChexDataset(path))


def test_existing_export_is_not_overwritten_unless_asked(tmp_path):
    write_chex(make_samples()[1:], tmp_path)
    with pytest.raises(FileExistsError):
        write_chex(make_samples()[:1], tmp_path)
    write_chex(make_samples()[:1], tmp_path, overwrite=True, image_format="jpg")
    (sample,) = list(ChexDataset(tmp_path / "annotations.json"))
    assert sample.id == "study/1" and ChexDataset(tmp_path / "annotations.json").imgs[1]["file_name"].endswith(".jpg")
    assert not list(tmp_path.glob(".annotations.json.*.tmp"))


@pytest.mark.parametrize("file_name", ["../outside/secret.png", "{outside}/secret.png"])
def test_an_image_path_leading_out_of_the_dataset_is_refused_unless_allowed(tmp_path, file_name):
    write_image(tmp_path / "outside" / "secret.png", 9)
    write_image(tmp_path / "data" / "a.png", 7)
    name = file_name.format(outside=tmp_path / "outside")  # relative climb, or absolute
    data = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": name}],
            "annotations": [{"id": 1, "image_id": 1, "caption": "Ok."}, {"id": 2, "image_id": 2, "caption": "Secret."}]}
    path = tmp_path / "data" / "chex.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"image id 2\.file_names: the image path leads outside the dataset folder"):
        ChexDataset(path)
    skipping = ChexDataset(path, on_error="skip")
    assert [s.report for s in skipping] == ["Ok."] and dict(skipping.skip_log.counts) == {"outside_root": 1}
    assert [s.report for s in ChexDataset(path, allow_outside_root=True)] == ["Ok.", "Secret."]


def test_malformed_path_fields_are_data_errors_that_skip_mode_skips(tmp_path):
    write_image(tmp_path / "a.png", 7)
    data = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "a.png", "file_names": "a.png"},
                       {"id": 3, "file_name": "a.png", "file_names": [5]}],
            "annotations": [{"id": i, "image_id": i, "caption": "Ok."} for i in (1, 2, 3)]}
    path = tmp_path / "chex.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"image id 2\.file_names: must be a list of paths"):
        ChexDataset(path)
    assert len(ChexDataset(path, on_error="skip")) == 1


def test_a_decompression_bomb_is_a_data_error_that_skip_mode_skips(tmp_path, monkeypatch):
    write_image(tmp_path / "small.png", 7, size=(8, 8))
    write_image(tmp_path / "huge.png", 7, size=(40, 40))  # "huge" once PIL's limit is lowered below
    data = {"images": [{"id": 1, "file_name": "small.png"}, {"id": 2, "file_name": "huge.png"}],
            "annotations": [{"id": 1, "image_id": 1, "caption": "Small."}, {"id": 2, "image_id": 2, "caption": "Huge."}]}
    (tmp_path / "chex.json").write_text(json.dumps(data))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 40 x 40 is over twice the limit: a bomb to PIL
    with pytest.raises(DataError, match=r"huge\.png: .*MAX_IMAGE_PIXELS = 500"):
        ChexDataset(tmp_path / "chex.json", validate_images=True)
    dataset = ChexDataset(tmp_path / "chex.json", on_error="skip")  # header not read: found on loading
    assert [s.report for s in dataset] == ["Small."] and dict(dataset.skip_log.counts) == {"image_too_large": 1}
