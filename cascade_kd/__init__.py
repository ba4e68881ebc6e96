"""cascade-kd: distil multilingual encoders through cascades of teacher assistants."""

__version__ = "0.1.0"

# Registers the student families, and the recursive (MiniALBERT) and BiLSTM (XtremeDistil) model
# types with transformers' Auto classes, so their checkpoints reload once cascade_kd is imported.
from cascade_kd import students as _students  # noqa: E402,F401
