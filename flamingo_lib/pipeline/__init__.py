"""The workbook's face: :class:`Pipeline` runs the workbench one idempotent step at a time (build,
data, feature cache, train, evaluate, grounding, report) under :class:`PipelineSettings`."""

from flamingo_lib.pipeline.settings import DataSettings, EvalSettings, ModelSettings, PipelineSettings
from flamingo_lib.pipeline.steps import Pipeline
from flamingo_lib.training.config import TrainConfig

__all__ = ["DataSettings", "EvalSettings", "ModelSettings", "Pipeline", "PipelineSettings", "TrainConfig"]
