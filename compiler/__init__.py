"""The compiler: scenario syntax tree -> checked, versioned, schema-validated execution plan.

Entry points: compile_program(program, overrides) and compile_file(path, overrides), returning a
Compiled plan; populace.compiler.plan loads a plan file for the runtime.
"""
from .pipeline import PASSES, Compiled, compile_file, compile_program

__all__ = ["PASSES", "Compiled", "compile_file", "compile_program"]
