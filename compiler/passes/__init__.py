"""The compiler's passes, one module each; compiler/pipeline.py's PASSES tuple is their one order.

Each module holds one pass, a plain function `pass(ctx) -> None` that reads the Context's tables
the earlier passes filled and adds its own (its docstring says which). The `check_*` passes check
and lower the declarations; `lower_state_starts` and `check_agent_prompts` lower what needs every
declaration first; `check_workflow` checks and lowers the workflow in one walk.
"""
