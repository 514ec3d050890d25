"""The scenario language front end: text -> syntax tree (populace.dsl.nodes) with diagnostics.

Entry points: load_program(path) for files with imports, parse_source(text, name) for one text,
format_module(module) for canonical text.
"""
from .diagnostics import Diagnostic, DiagnosticError, Reporter
from .load import Program, load_program, parse_source

__all__ = ["Diagnostic", "DiagnosticError", "Program", "Reporter", "load_program", "parse_source"]
