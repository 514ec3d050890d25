"""The `populace` command: composes the language (dsl), the compiler and the runtime.

It is the only package that imports all three; `python -m populace.cli` is the same command.
"""
from .main import main

__all__ = ["main"]
