"""cascade-kd: distil multilingual encoders through cascades of teacher assistants."""

__version__ = "0.1.0"

# Registers the recursive students (model_type "cascade_kd_recursive", cascade_kd/recursive.py) with
# transformers' Auto classes, so their checkpoints reload with AutoModelFor...from_pretrained once
# cascade_kd is imported. (This imports torch and transformers with the package.)
from cascade_kd.students import recursive as _recursive  # noqa: E402,F401
# Likewise the BiLSTM students (model_type "cascade_kd_bilstm", cascade_kd/bilstm.py, XtremeDistil).
from cascade_kd.students import bilstm as _bilstm  # noqa: E402,F401
