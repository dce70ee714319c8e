"""Methods: each builds a model (and its input pipeline needs) from the run configuration."""

from mlrkit.methods.base import METHODS, Method, StepOutput, TaskInfo, build_method

__all__ = ["METHODS", "Method", "StepOutput", "TaskInfo", "build_method"]
