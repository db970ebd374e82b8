"""Embedded frozen encoders, pretrained in-project so the whole Flamingo recipe runs offline.

See :mod:`flamingo_lib.encoders.embedded` (``ensure_embedded_encoders``, the sentinels
``embedded-tiny-biogpt``, ``embedded-tiny-vit`` and ``embedded-smollm2``).
"""
