"""Students: model anatomy, the family registry, and the built-in families (transformer, recursive,
bilstm). Importing this package registers the families, and the recursive and BiLSTM model types
with transformers' Auto classes, so their checkpoints reload with AutoModelFor...from_pretrained."""

from cascade_kd.students import bilstm, recursive, transformer  # noqa: F401  (each registers its family)
from cascade_kd.students.registry import (
    FAMILIES,
    StudentFamily,
    build_student,
    count_parameters,
    family,
    family_of,
    register,
    student_config,
)

__all__ = ["FAMILIES", "StudentFamily", "build_student", "count_parameters", "family", "family_of", "register",
           "student_config"]
