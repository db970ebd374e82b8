"""Decoding many studies: batched generation, findings-guided decoding and reports for a reader's
own films.
"""
