"""What to run: ScriptRunConfig, RunConfiguration and Environment (no I/O beyond config files)."""

from rundock.runconfig.environment import CondaDependencies, DockerSection, Environment, PythonSection
from rundock.runconfig.run_configuration import RunConfiguration
from rundock.runconfig.script_run_config import ScriptRunConfig

__all__ = ["CondaDependencies", "DockerSection", "Environment", "PythonSection", "RunConfiguration", "ScriptRunConfig"]
