"""The recipes the embedded encoders are pretrained with: the phantom corpus, the tokenizer, the
LM, CLIP and label pretraining of the vision trunk, the probe and the vision build.
"""
