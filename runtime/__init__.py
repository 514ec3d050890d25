"""The runtime: runs a compiled plan on Ray (or in this process) and writes the run directory.

For users writing Python: `environment_kind`, `param`, `each`, `action` and `query` declare a new
environment kind (docs/extensions.md); python models are plain functions (docs/runtime.md).
"""
from populace.compiler.plan.extensions import action, each, environment_kind, param, query

__all__ = ["action", "each", "environment_kind", "param", "query"]
