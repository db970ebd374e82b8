"""Training: :class:`~flamingo_lib.training.config.TrainConfig` (the recipe), the trainer, optimiser
groups, the learning-rate schedule, sampling and checkpoints.
"""
