"""The recipe: its schema (pydantic sections), YAML read with line numbers, and error messages."""

from cascade_kd.config.messages import where
from cascade_kd.config.schema import (
    CascadeConfig,
    DataConfig,
    LossConfig,
    Recipe,
    StageConfig,
    StudentConfig,
    TaskConfig,
    TeacherConfig,
    TrainConfig,
    load_recipe,
    parse_recipe,
)

__all__ = ["CascadeConfig", "DataConfig", "LossConfig", "Recipe", "StageConfig", "StudentConfig", "TaskConfig",
           "TeacherConfig", "TrainConfig", "load_recipe", "parse_recipe", "where"]
