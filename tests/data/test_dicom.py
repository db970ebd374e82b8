import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from flamingo_lib.data.datasets.dicom import DicomFolder, read_dicom
from data_fixtures import write_dicom
from flamingo_lib.data.errors import DataError


@pytest.fixture(scope="module")
def chest_cr():
    """pydicom-data's real PA chest CR: 1955x1841, 15-bit stored, MONOCHROME1."""
    path = get_testdata_file("RG1_UNCR.dcm")
    return path, pydicom.dcmread(path).pixel_array.astype(float)


def test_monochrome1_chest_radiograph_is_inverted_so_bone_is_bright(chest_cr):
    path, raw = chest_cr
    out = np.asarray(read_dicom(path), dtype=float)
    assert out.shape == raw.shape
    assert np.corrcoef(raw.ravel(), out.ravel())[0, 1] < -0.99
    height, width = out.shape
    mediastinum = out[height // 4 : 3 * height // 4, 9 * width // 20 : 11 * width // 20].mean()
    lungs = np.r_[out[height // 4 : height // 2, width // 5 : width // 3].ravel(),
                  out[height // 4 : height // 2, 2 * width // 3 : 4 * width // 5].ravel()].mean()  # fmt: skip
    assert mediastinum > lungs + 40


def test_chest_radiograph_uses_the_8bit_range_without_clipping_flat(chest_cr):
    image = read_dicom(chest_cr[0])
    out = np.asarray(image)
    assert image.mode == "L" and out.dtype == np.uint8
    assert out.max() - out.min() > 180 and out.std() > 25
    assert np.mean((out == 0) | (out == 255)) < 0.05


def test_monochrome2_16bit_without_window_uses_a_robust_percentile_window(tmp_path):
    ramp = np.tile(np.linspace(1000, 40000, 200), (100, 1))
    ramp[0, 0], ramp[0, 1] = 0, 65535  # a dead and a hot pixel must not set the range
    out = np.asarray(read_dicom(write_dicom(tmp_path / "m2.dcm", ramp)), dtype=float)
    assert out[:, 0].mean() < 5 and out[:, -1].mean() > 250  # ramp spans the full range
    assert np.all(np.diff(out[1:], axis=1) >= 0)  # not inverted, monotone
    assert 120 < out[50, 100] < 135  # linear in between, not dominated by the outliers


def test_window_centre_and_width_in_the_file_are_applied_to_rescaled_values(tmp_path):
    ramp = np.tile(np.arange(0, 4096, 16), (10, 1))
    path = write_dicom(tmp_path / "w.dcm", ramp, bits_stored=12, RescaleSlope=1, RescaleIntercept=-1024,
                       WindowCenter=0, WindowWidth=1000)  # fmt: skip
    out = np.asarray(read_dicom(path), dtype=float)[0]
    values = ramp[0] - 1024
    assert np.all(out[values < -500] == 0) and np.all(out[values > 500] == 255)
    assert abs(out[np.argmin(np.abs(values))] - 127.5) < 3


def test_window_that_clips_everything_falls_back_to_percentiles(tmp_path):
    ramp = np.tile(np.linspace(1000, 2000, 64), (8, 1))
    path = write_dicom(tmp_path / "off.dcm", ramp, WindowCenter=30000, WindowWidth=100)
    out = np.asarray(read_dicom(path))
    assert out.min() < 5 and out.max() > 250


def test_non_dicom_and_multiframe_files_raise_data_errors(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"nope")
    with pytest.raises(DataError, match="x.dcm") as caught:
        read_dicom(tmp_path / "x.dcm")
    assert caught.value.reason == "corrupt_image"
    frames = np.stack([np.full((4, 5), 100), np.tile(np.arange(5) * 1000, (4, 1))])
    path = write_dicom(tmp_path / "mf.dcm", frames.reshape(8, 5), NumberOfFrames=2, Rows=4)
    with pytest.raises(DataError, match="pass frame=") as caught:
        read_dicom(path)
    assert caught.value.reason == "multi_frame"
    assert np.asarray(read_dicom(path, frame=1))[0, -1] == 255


def test_dicom_folder_pairs_files_with_reports_and_defaults_to_credentialed(tmp_path):
    write_dicom(tmp_path / "a.dcm", np.tile(np.arange(8) * 100, (6, 1)), ViewPosition="PA")
    write_dicom(tmp_path / "b.dcm", np.zeros((6, 8)))
    reports = {"a": " FINDINGS: Clear.\n IMPRESSION: Normal.", "c": "orphan"}
    with pytest.raises(DataError, match="b.dcm: no report"):
        DicomFolder(tmp_path, reports)
    folder = DicomFolder(tmp_path, reports, on_error="skip")
    (sample,) = list(folder)
    assert (sample.id, sample.report, sample.views) == ("a", "Clear.", ["PA"])
    assert sample.meta["credentialed"] is True and sample.images[0].mode == "L"
    assert folder.skip_log.counts == {"missing_report": 1}
    plain = DicomFolder(tmp_path, lambda path: "Heart normal.", credentialed=False)
    assert [s.report for s in plain] == ["Heart normal.", "Heart normal."]
