"""The frozen backbones: causal LMs and their tokenizers, vision encoders (open_clip, HF CLIP), the
sentinel names of the embedded encoders and the registry through which they are resolved.
"""
