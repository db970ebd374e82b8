"""The R2Gen and ReXrank protocols: known report text in, the exact text that reaches the scorers out,
on an annotation tree in R2Gen's layout scored end to end by ``flamingo-evaluate --protocol``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from data_fixtures import write_image
from flamingo_lib.cli.evaluate_on import main
from flamingo_lib.evaluation.metrics import normalise_report
from flamingo_lib.evaluation.protocols import ProtocolError, prepare, r2gen_clean
from flamingo_lib.pipeline.steps import Pipeline
from pipeline_runs import SMALL

COMMON = ["--max-new-tokens", str(SMALL["max_new_tokens"]), "--no-progress", "--device", "cpu",
          "--no-feature-cache"]
#: A MIMIC-style findings text: de-identification marks, numbering, a time, brackets, a line break.
DEIDENTIFIED = ("Heart size is normal.  Dr. ___ was paged at 10:30 a.m. on ___.\n"
                "1. No pneumothorax. 2. Small left-sided effusion (unchanged)!")
#: What R2Gen's clean_report_mimic_cxr makes of it (checked against R2Gen's own function).
DEIDENTIFIED_CLEANED = ("heart size is normal . dr . was paged at 1030 am . on . no pneumothorax . "
                        "small left-sided effusion unchanged .")
#: The training report, 10 times: R2Gen keeps a MIMIC-CXR word seen at least 10 times.
TRAIN_REPORT = "Heart size is normal. No pneumothorax. Small left-sided effusion."
VOCABULARY = {"heart", "size", "is", "normal", ".", "no", "pneumothorax", "small", "left-sided", "effusion"}


def test_r2gen_cleaning_gives_what_r2gen_gives():
    assert r2gen_clean(DEIDENTIFIED) == DEIDENTIFIED_CLEANED
    # IU X-Ray's cleaner keeps the line break, so "___.\n1. No" is not a sentence end there
    assert r2gen_clean(DEIDENTIFIED, "iu_xray") == ("heart size is normal . dr . was paged at 1030 am . on no "
                                                    "pneumothorax . small left-sided effusion unchanged .")
    # the hyphen stays; quotes, slashes, brackets, ';' and the decimal point go
    assert r2gen_clean('FINDINGS: PA and lateral views..  "Stable" 1.5-cm nodule; see C/T ___ [prior].') == \
        "findings pa and lateral views . stable 15-cm nodule see ct prior ."
    assert normalise_report(DEIDENTIFIED_CLEANED) == DEIDENTIFIED_CLEANED  # the scorer's own tidying leaves it


def build_r2gen_mimic(root: Path) -> Path:
    """R2Gen's MIMIC-CXR ``annotation.json`` (one entry per film, MIMIC-CXR-JPG paths) and ``images/``."""
    def entry(number: int, report: str, split: str) -> dict:
        subject, study = f"1000{number:04d}", f"5000{number:04d}"
        path = f"p10/p{subject}/s{study}/d{number}.jpg"
        write_image(root / "images" / path, 40 + number)
        return {"id": f"d{number}", "study_id": int(study), "subject_id": int(subject), "report": report,
                "image_path": [path], "split": split}

    data = {"train": [entry(k, TRAIN_REPORT, "train") for k in range(10)],
            "val": [entry(10, TRAIN_REPORT, "val")],
            "test": [entry(11, DEIDENTIFIED, "test"), entry(12, "No pneumothorax. " * 40, "test")]}
    path = root / "annotation.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("protocols") / "run"
    Pipeline(run_dir=str(run), **SMALL).train()
    return run


@pytest.fixture
def scored(monkeypatch):
    """Every (references, hypotheses) pair handed to the pycocoevalcap and RadEval scorers."""
    import flamingo_lib.evaluation.evaluate as evaluate_module
    import flamingo_lib.evaluation.radeval_metrics as radeval_module

    calls: dict[str, list] = {"nlg": [], "radeval": []}
    nlg, radeval = evaluate_module.nlg_metrics, radeval_module.radeval_scores

    def record_nlg(references, hypotheses):
        calls["nlg"].append((list(references), list(hypotheses)))
        return nlg(references, hypotheses)

    def record_radeval(references, hypotheses, metrics):
        calls["radeval"].append((list(references), list(hypotheses), list(metrics)))
        return radeval(references, hypotheses, metrics)

    monkeypatch.setattr(evaluate_module, "nlg_metrics", record_nlg)
    monkeypatch.setattr(radeval_module, "radeval_scores", record_radeval)
    return calls


def test_r2gen_protocol_scores_cleaned_truncated_text_and_says_so(trained_run, tmp_path, scored):
    annotation = build_r2gen_mimic(tmp_path / "mimic_cxr")
    spec = f"r2gen:{annotation},{tmp_path / 'mimic_cxr' / 'images'}"
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="credentialed"):
        table = main([str(trained_run), "--data", spec, "--protocol", "r2gen", "--out", str(out), *COMMON])

    unknown_cleaned = ("heart size is normal . <unk> . <unk> <unk> <unk> <unk> <unk> . <unk> . no pneumothorax . "
                       "small left-sided effusion <unk> .")
    long_reference = " ".join(["no", "pneumothorax", "."] * 33)  # 120 words cut to R2Gen's 99
    references = [unknown_cleaned, long_reference]
    assert scored["nlg"] and all(refs == references for refs, _ in scored["nlg"])
    for _, hypotheses in scored["nlg"]:  # every system's report: R2Gen's vocabulary or <unk>, at most 100 words
        for hypothesis in hypotheses:
            assert set(hypothesis.split()) <= VOCABULARY | {"<unk>"} and len(hypothesis.split()) <= 100
    generations = pd.read_json(out / "generations.jsonl", lines=True)
    assert list(generations["reference"]) == references
    assert (generations["most frequent report"].str.split().map(set) <= VOCABULARY | {"<unk>"}).all()

    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["protocol"] == "r2gen" and protocol["n_test"] == 2 and protocol["data"] == spec
    assert protocol["dataset"] == "MIMIC-CXR (R2Gen annotation)" and protocol["split"].startswith("test")
    assert protocol["vocabulary"]["threshold"] == 10 and protocol["vocabulary"]["size"] == len(VOCABULARY)
    assert protocol["truncation"] == {"max_seq_length": 100, "reference_words": 99, "report_words": 100}
    assert protocol["metrics"] == ["BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr"]
    assert protocol["deviations"] == []
    results = pd.read_csv(out / "results.csv", index_col="system")
    assert set(results.index) == {"flamingo", "most frequent report", "nearest neighbour", "LM without image"}
    pd.testing.assert_series_equal(results["BLEU_4"], table["BLEU_4"].astype(float), check_names=False)
    assert "Protocol 'r2gen'" in (out / "PROTOCOL.md").read_text()


def test_rexrank_protocol_keeps_the_deidentification_marks(trained_run, tmp_path, scored):
    annotation = build_r2gen_mimic(tmp_path / "mimic_cxr")
    spec = f"r2gen:{annotation},{tmp_path / 'mimic_cxr' / 'images'}"
    out = tmp_path / "out"
    with pytest.warns(UserWarning):
        main([str(trained_run), "--data", spec, "--protocol", "rexrank", "--max-samples", "1", "--out", str(out),
              *COMMON])
    # the findings as written, whitespace runs collapsed by the reader, '___' untouched
    reference = ("Heart size is normal. Dr. ___ was paged at 10:30 a.m. on ___. 1. No pneumothorax. "
                 "2. Small left-sided effusion (unchanged)!")
    assert scored["radeval"] and all(refs == [reference] for refs, _, _ in scored["radeval"])
    assert all(metrics == ["bleu", "bertscore", "radgraph", "f1chexbert", "ratescore", "radcliq", "green"]
               for _, _, metrics in scored["radeval"])
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["protocol"] == "rexrank" and protocol["n_test"] == 1
    assert protocol["section"].startswith("FINDINGS") and "'___'" in protocol["text_normalisation"]
    assert protocol["deviations"][0] == "--max-samples 1: only the test split's first 1 of its studies were scored"
    assert "one entry per film" in protocol["deviations"][1]
    results = json.loads((out / "results.json").read_text())
    assert set(protocol["not_computed"]) >= set(results["not_computed"])  # what RadEval could not load, by name
    assert "RadEval bleu" in pd.read_csv(out / "results.csv").columns


def test_data_that_cannot_satisfy_a_protocol_is_refused_by_name(trained_run, tmp_path, capsys):
    annotation = build_r2gen_mimic(tmp_path / "mimic_cxr")
    spec = f"r2gen:{annotation},{tmp_path / 'mimic_cxr' / 'images'}"
    cases = [(["--data", "phantom:templated", "--protocol", "r2gen"], "has no R2Gen split"),
             (["--data", "phantom:templated", "--protocol", "rexrank"], "needs MIMIC-CXR's official test split"),
             (["--data", spec, "--protocol", "r2gen", "--split", "val"], "scores the official test split")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as stop:
            main([str(trained_run), *argv, *COMMON])
        assert stop.value.code == 2 and message in capsys.readouterr().err


def test_an_annotation_without_a_train_list_has_no_vocabulary(tmp_path):
    from flamingo_lib.data.sources import open_source

    annotation = build_r2gen_mimic(tmp_path)
    data = json.loads(annotation.read_text())
    annotation.write_text(json.dumps(dict(data, train=[])))
    test = open_source(f"r2gen:{annotation},{tmp_path / 'images'}", "test", None)
    with pytest.raises(ProtocolError, match=r"annotation.json: field 'train': expected a non-empty list"):
        prepare("r2gen", f"r2gen:{annotation},{tmp_path / 'images'}", "test", test, [])


def test_rexrank_on_mimic_scores_the_findings_of_studies_that_have_them(tmp_path):
    from data_fixtures import Study, build_mimic, mimic_report
    from flamingo_lib.data.sources import open_source

    studies = [Study("12000012", "52000001", "test", [("d07-pa", "PA", 17)], labels=None,
                     report=mimic_report(findings="Compared to ___, no   pneumothorax.", impression="Stable.")),
               Study("12000013", "52000002", "test", [("d08-pa", "PA", 18)], labels=None,
                     report=mimic_report(findings=None, impression="No acute process."))]
    spec = f"mimic:{build_mimic(tmp_path / 'mimic', studies)}"
    prepared = prepare("rexrank", spec, "test", open_source(spec, "test", None), [])
    assert [s.report for s in prepared.test] == ["Compared to ___, no pneumothorax."]  # no IMPRESSION fall-back
    assert prepared.record["n_test"] == 1 and prepared.record["n_excluded_without_findings"] == 1
    assert prepared.record["deviations"] == []


def test_an_annotation_with_an_empty_test_list_is_refused(tmp_path):
    from data_fixtures import build_r2gen
    from flamingo_lib.data.sources import open_source

    annotation = build_r2gen(tmp_path)  # IU flavour, no test entries
    spec = f"r2gen:{annotation},{tmp_path / 'images'}"
    with pytest.raises(ProtocolError, match="the test split is empty"):
        prepare("r2gen", spec, "test", open_source(spec, "test", None), [])
