"""Auxiliary heads on the resampled latents: the findings head (with its reading outputs), its
predictions, and the findings tokens handed to the LM.
"""
