"""The seen-sentences diagnostic: which generated sentences the training reports never contain."""

from __future__ import annotations

from experiments.seen_sentences import known_sentences, seen_rates, sentences


def test_sentences_split_after_full_stops_and_ignore_case():
    assert sentences("Heart size is normal.  No effusion. ") == ["heart size is normal.", "no effusion."]
    assert sentences("") == []


def test_seen_rates_count_sentences_and_whole_reports():
    known = known_sentences(["Heart size is normal. The lungs are clear.", "No pleural effusion."])
    reports = ["heart size is normal. No pleural effusion.",            # both seen
               "The lungs are clear. Cardiomediastinal silhouette is enlarged.form scans."]  # one composed
    sentence_rate, report_rate = seen_rates(reports, known)
    assert sentence_rate == 3 / 4 and report_rate == 1 / 2
    assert seen_rates([], known) == (0.0, 0.0)
