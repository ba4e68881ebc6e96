"""cascade-kd: distil multilingual encoders through cascades of teacher assistants."""

__version__ = "0.1.0"
