from flamingo_lib.data.report_sections import split_sections, target_text

REPORT = """\
 WET READ: ___ ___ ___ 9:29 PM
   No pneumonia.
 ______________________________________________________________________________
                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new cough  // eval for
 pneumonia

 COMPARISON:  ___

 FINDINGS:

 The cardiomediastinal silhouette is normal.  No focal consolidation,
 pleural effusion or pneumothorax.   Clips project over the
 left upper quadrant.

 IMPRESSION:  No acute cardiopulmonary
 process.
"""


def test_headers_with_text_on_the_same_or_next_line_are_both_split():
    sections = split_sections(REPORT)
    assert sections["EXAMINATION"] == "CHEST (PA AND LAT)"
    assert sections["IMPRESSION"] == "No acute cardiopulmonary process."
    assert sections["FINDINGS"].startswith("The cardiomediastinal silhouette")


def test_wrapped_lines_are_joined_with_single_spaces():
    findings = split_sections(REPORT)["FINDINGS"]
    assert findings == (
        "The cardiomediastinal silhouette is normal. No focal consolidation, pleural effusion or "
        "pneumothorax. Clips project over the left upper quadrant."
    )


def test_deidentification_placeholders_are_kept_with_whitespace_normalised():
    sections = split_sections(REPORT)
    assert sections["INDICATION"] == "___F with new cough // eval for pneumonia"
    assert sections["COMPARISON"] == "___"
    assert sections["WET READ"] == "___ ___ ___ 9:29 PM No pneumonia."


def test_final_report_banner_and_separator_rows_are_dropped():
    sections = split_sections(REPORT)
    assert list(sections) == ["WET READ", "EXAMINATION", "INDICATION", "COMPARISON", "FINDINGS", "IMPRESSION"]
    assert not any("FINAL REPORT" in text or "____" in text for text in sections.values())


def test_preamble_before_the_first_header_is_dropped():
    assert split_sections("Some banner text\n more preamble\n FINDINGS: Clear lungs.") == {"FINDINGS": "Clear lungs."}


def test_each_addendum_is_its_own_section_and_keeps_its_inner_headers():
    text = REPORT + "\n ADDENDUM:\n Findings were discussed\n with Dr. ___.\n\n ADDENDUM\n IMPRESSION: revised.\n"
    sections = split_sections(text)
    assert sections["ADDENDUM"] == "Findings were discussed with Dr. ___."
    assert sections["ADDENDUM 2"] == "IMPRESSION: revised."
    assert sections["IMPRESSION"] == "No acute cardiopulmonary process."


def test_final_addendum_banner_followed_by_addendum_header_opens_one_addendum():
    text = "                FINAL ADDENDUM\n ADDENDUM: Called to ___.\n                FINAL REPORT\n FINDINGS: Clear."
    assert split_sections(text) == {"ADDENDUM": "Called to ___.", "FINDINGS": "Clear."}


def test_lower_case_labels_and_clock_times_inside_text_are_not_headers():
    sections = split_sections(" FINDINGS: Heart size\n Heart size: normal.\n 10:15 am called.")
    assert sections == {"FINDINGS": "Heart size Heart size: normal. 10:15 am called."}


def test_empty_sections_are_omitted_and_repeated_headers_are_joined():
    sections = split_sections(" FINDINGS:\n\n IMPRESSION: One.\n NOTIFICATION:\n IMPRESSION: Two.")
    assert sections == {"IMPRESSION": "One. Two."}


def test_target_text_prefers_findings_then_falls_back_to_impression():
    assert target_text({"FINDINGS": "F.", "IMPRESSION": "I."}) == "F."
    assert target_text({"FINDINGS": "  ", "IMPRESSION": "I."}) == "I."
    assert target_text({"INDICATION": "cough"}) == ""
