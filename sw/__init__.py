"""tileskip host side: numerics contract, quantizer/compiler, runtime."""

from .compiler import CompileError, compile_model
from .config import CONFIGS, Config, ConfigError
from .program import Layer, Program, ProgramError
from .runtime import Accelerator, Result

__all__ = ["compile_model", "CompileError", "Config", "ConfigError", "CONFIGS", "Accelerator",
           "Result", "Program", "ProgramError", "Layer"]
