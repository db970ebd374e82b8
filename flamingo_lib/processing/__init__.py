"""Text and images to model inputs: :class:`~flamingo_lib.processing.processor.FlamingoProcessor`
and the prompt formats shared by training and generation.
"""
