"""Measuring a trained model: the field's metrics, the evaluation against baselines, which findings
the text follows and grounding (the pointing game).
"""
