"""The reward-fine-tuning probe's reward-hacking checks on reports whose answer is known."""

from __future__ import annotations

import pytest

from experiments.reward_finetune import hacking_checks, sentences


def test_sentences_split_at_full_stops_lower_cased():
    assert sentences("Heart normal. Lungs clear.  No effusion.") == ["heart normal.", "lungs clear.", "no effusion."]


def test_hacking_checks_count_repeats_unseen_sentences_and_length():
    training = ["Heart normal. Lungs clear."]
    reports = ["Heart normal. Heart normal.", "Lungs clear. Huge spleen visible."]
    references = ["Heart normal. Lungs clear.", "Lungs clear."]
    checks = hacking_checks(reports, references, training)
    assert checks["repeated_sentence_share"] == pytest.approx(0.5)
    assert checks["unseen_sentence_share"] == pytest.approx(1 / 4)
    assert checks["length_ratio"] == pytest.approx(9 / 6)
