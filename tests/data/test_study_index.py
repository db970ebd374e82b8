"""The text-only index of each dataset (reports, film counts: no image decoded), the streamed film
passes, and the index tables parsed once for all splits."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import flamingo_lib.data.datasets.chex as chex_module
import flamingo_lib.data.datasets.iu_xray as iu_module
import flamingo_lib.data.datasets.mimic as mimic_module
import flamingo_lib.data.index_tables as index_tables
from flamingo_lib.data.datasets.chex import ChexDataset, write_chex
from flamingo_lib.data.datasets.iu_xray import IUXray, R2GenAnnotation
from flamingo_lib.data.datasets.mimic import MimicCXR
from flamingo_lib.data.feature_cache import image_hash
from flamingo_lib.data.sources import Head
from flamingo_lib.data.study_index import image_counts, iter_films, study_reports
from flamingo_lib.data.sample import CXRSample
from data_fixtures import build_iu, build_mimic, build_r2gen


def make_samples() -> list[CXRSample]:
    """Two studies for a Chex file: two views and one."""
    film = Image.fromarray(np.arange(24 * 32, dtype=np.uint8).reshape(24, 32))
    return [CXRSample(id="1", images=[film, film.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], report="Small effusion.",
                      meta={"credentialed": False}),
            CXRSample(id="2", images=[film.rotate(90)], report="Clear lungs.", meta={"credentialed": False})]


def _datasets(tmp_path: Path) -> dict[str, object]:
    mimic_root = build_mimic(tmp_path / "mimic")
    xml_dir, image_dir = build_iu(tmp_path / "iu")
    return {
        "mimic per image": MimicCXR(mimic_root, split=None, views=None),
        "mimic per study": MimicCXR(mimic_root, split=None, views=None, all_views_per_study=True),
        "iu": IUXray(xml_dir, image_dir, on_error="skip"),
        "r2gen": R2GenAnnotation(build_r2gen(tmp_path / "r2"), tmp_path / "r2" / "images"),
        "chex": ChexDataset(write_chex(make_samples(), tmp_path / "chex")),
        "head of mimic": Head(MimicCXR(mimic_root, split=None, views=None), 3),
    }


@pytest.mark.parametrize("kind", ["mimic per image", "mimic per study", "iu", "r2gen", "chex", "head of mimic"])
def test_the_index_gives_each_samples_report_and_film_count_without_decoding_an_image(tmp_path, monkeypatch, kind):
    dataset = _datasets(tmp_path)[kind]
    loaded = [dataset[i] for i in range(len(dataset))]
    assert loaded  # (R2Gen's fixture split has one entry of two films)
    for module in (mimic_module, iu_module, chex_module):
        monkeypatch.setattr(module, "load_image", lambda *a, **k: pytest.fail("an image was decoded"))
    assert study_reports(dataset) == [sample.report for sample in loaded]
    assert image_counts(dataset) == [len(sample.images) for sample in loaded]


def test_a_dataset_without_an_index_is_read_sample_by_sample() -> None:
    samples = make_samples()
    assert study_reports(samples) == [s.report for s in samples] and image_counts(samples) == [2, 1]


def test_films_stream_in_index_order_from_worker_processes_as_from_this_one(tmp_path) -> None:
    dataset = MimicCXR(build_mimic(tmp_path / "mimic"), split=None, views=None, all_views_per_study=True)
    here = [image_hash(im) for im in iter_films([dataset, dataset])]
    workers = [image_hash(im) for im in iter_films([dataset, dataset], num_workers=2)]
    assert workers == here and len(here) == 2 * sum(image_counts(dataset))
    first = [image_hash(im) for im in iter_films([dataset], num_workers=2, first_view_only=True)]
    assert first == [image_hash(dataset[i].images[0]) for i in range(len(dataset))]


def test_the_splits_of_one_release_parse_its_tables_once(tmp_path, monkeypatch) -> None:
    root = build_mimic(tmp_path / "mimic")
    index_tables._KEPT.clear()
    parsed = []
    real = index_tables._parse
    monkeypatch.setattr(index_tables, "_parse", lambda path, *a: parsed.append(Path(path).name) or real(path, *a))
    splits = {split: MimicCXR(root, split=split, views=None) for split in ("train", "validate", "test")}
    assert sorted(parsed) == sorted(["mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-split.csv.gz",
                                     "mimic-cxr-2.0.0-chexpert.csv.gz"])
    assert [len(d) for d in splits.values()] == [3, 3, 1]
    # a table changed on disk is parsed again, and its new rows are read
    path = root / "mimic-cxr-2.0.0-split.csv.gz"
    text = gzip.decompress(path.read_bytes()).decode().replace(",test\n", ",train\n")
    path.write_bytes(gzip.compress(text.encode()))
    assert len(MimicCXR(root, split="train", views=None)) == 4 and parsed.count(path.name) == 2


def test_a_kept_table_is_not_changed_by_what_a_reader_adds_to_its_copy(tmp_path) -> None:
    root = build_mimic(tmp_path / "mimic")
    path = index_tables.find_table(root, "mimic-cxr-2.0.0-split.csv")
    first = index_tables.read_table(path, ("dicom_id", "split"))
    first["extra"] = "x"
    first.loc[0, "split"] = "changed"
    again = index_tables.read_table(path, ("dicom_id", "split"))
    assert list(again.columns) == ["dicom_id", "split"] and "changed" not in set(again["split"])


def test_a_table_missing_a_column_is_refused_naming_it(tmp_path) -> None:
    root = build_mimic(tmp_path / "mimic")
    path = index_tables.find_table(root, "mimic-cxr-2.0.0-split.csv")
    with pytest.raises(ValueError, match=r"missing columns \['ViewPosition'\]"):
        index_tables.read_table(path, ("dicom_id", "ViewPosition"))
