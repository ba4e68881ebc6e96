"""The `cascade-kd` command line: a thin layer over the Python API."""

from cascade_kd.cli.app import main

__all__ = ["main"]
