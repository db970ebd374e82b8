"""In-context examples in training: each study's 0..k examples drawn once per study, put before it in
Flamingo's few-shot format, with the loss on the study's own report only."""

from __future__ import annotations

import pytest

from conftest import xray_like
from flamingo_lib.data.sample import CXRSample
from flamingo_lib.processing.processor import IGNORE_INDEX
from flamingo_lib.training.shots import random_shots
from flamingo_lib.training.trainer import ReportCollator

TRAIN = [CXRSample(f"s{i}", [xray_like(i)], f"Report number {i}.") for i in range(12)]


def test_each_study_gets_the_same_zero_to_k_other_studies_every_time():
    shots = random_shots(TRAIN, k=3, seed=1)
    drawn = {s.id: [e.id for e in shots(s)] for s in TRAIN}
    assert drawn == {s.id: [e.id for e in shots(s)] for s in TRAIN}  # a resumed run builds the same batches
    assert all(len(ids) <= 3 and s not in ids and len(set(ids)) == len(ids) for s, ids in drawn.items())
    assert {len(ids) for ids in drawn.values()} > {0}  # some zero-shot, some with examples
    assert drawn != {s.id: [e.id for e in random_shots(TRAIN, k=3, seed=2)(s)] for s in TRAIN}
    with pytest.raises(ValueError, match="need more than 3 training studies"):
        random_shots(TRAIN[:3], k=3)


def test_the_examples_come_first_and_only_the_studys_own_report_is_learned(tiny):
    _, processor = tiny
    examples = TRAIN[1:3]
    collator = ReportCollator(processor, shots=lambda sample: examples if sample.id == "s0" else [])
    batch = collator([TRAIN[0], TRAIN[5]])
    ids = batch["input_ids"][0][batch["attention_mask"][0].bool()]
    text = processor.tokenizer.decode(ids)
    assert text.index("Report number 1.") < text.index("Report number 2.") < text.index("Report number 0.")
    assert text.count("<EOC>") == 3 and batch["media_locations"].sum(-1).tolist() == [3, 1]
    learned = [processor.tokenizer.decode(row[row != IGNORE_INDEX]).strip() for row in batch["labels"]]
    assert learned == ["Report number 0.<EOC>", "Report number 5.<EOC>"]
    assert (batch["pixel_values"][0, 0] == processor.preprocess_images(examples[0].images)[0]).all()
