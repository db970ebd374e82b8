"""The Flamingo model: configuration, Perceiver Resampler, gated cross-attention, their injection
into a frozen causal LM, the new token rows, the frozen backbones, the auxiliary heads and the
Hugging Face model with generation. It imports nothing of data, labeling, training, evaluation,
reporting or the pipeline.
"""
