"""The job-side API (standard library only): ``from rundock.context import Run, ScriptRunConfig``."""

from rundock.context.config import ScriptRunConfig
from rundock.context.run import ExperimentRef, Run

__all__ = ["ExperimentRef", "Run", "ScriptRunConfig"]
