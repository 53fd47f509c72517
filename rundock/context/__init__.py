"""The job-side API (standard library only): ``from rundock.context import Run``."""

from rundock.context.run import ExperimentRef, Run

__all__ = ["ExperimentRef", "Run"]
