"""Short readable source text of an expression, for messages and for naming `record` items.

In: a dsl expression node. Out: one line of text (`mean(players.guess)`), parenthesised by precedence.
"""
from __future__ import annotations

from populace.dsl import nodes as n

_PRECEDENCE = {"or": 1, "and": 2, "==": 4, "!=": 4, "<": 4, "<=": 4, ">": 4, ">=": 4, "in": 4, "not in": 4,
               "+": 5, "-": 5, "*": 6, "/": 6, "//": 6, "%": 6, "**": 8}


def expression_text(e: n.Expr, parent: int = 0) -> str:
    if isinstance(e, n.Literal):
        return e.text or repr(e.value)
    if isinstance(e, n.Name):
        return e.id
    if isinstance(e, n.Attr):
        return f"{expression_text(e.value, 9)}.{e.attr}"
    if isinstance(e, n.Index):
        return f"{expression_text(e.value, 9)}[{expression_text(e.index)}]"
    if isinstance(e, n.Call):
        args = []
        for a in e.args:
            value = expression_text(a.value)
            if a.name:
                args.append(f"{a.name} = {value}")
            elif a.key is not None:
                args.append(f"{expression_text(a.key)}: {value}")
            else:
                args.append(value)
        return f"{expression_text(e.func, 9)}({', '.join(args)})"
    if isinstance(e, n.BinOp):
        p = _PRECEDENCE[e.op]
        text = f"{expression_text(e.left, p)} {e.op} {expression_text(e.right, p + 1)}"
        return f"({text})" if p < parent else text
    if isinstance(e, n.UnaryOp):
        p = 3 if e.op == "not" else 7
        text = f"not {expression_text(e.operand, p)}" if e.op == "not" else f"-{expression_text(e.operand, p)}"
        return f"({text})" if p < parent else text
    if isinstance(e, n.Piped):
        args = "".join(", " + expression_text(a.value) for a in e.args)
        text = f"{expression_text(e.value, 1)} | {e.name}" + (f"({args[2:]})" if e.args else "")
        return f"({text})" if parent > 0 else text
    if isinstance(e, n.Filtered):
        text = f"{expression_text(e.value, 1)} where {expression_text(e.where, 1)}"
        return f"({text})" if parent > 0 else text
    if isinstance(e, n.IfExp):
        text = f"{expression_text(e.then, 1)} if {expression_text(e.test, 1)} else {expression_text(e.orelse)}"
        return f"({text})" if parent > 0 else text
    if isinstance(e, n.ListLit):
        return "[" + ", ".join(expression_text(i) for i in e.items) + "]"
    if isinstance(e, n.RecordLit):
        return "{" + ", ".join(f"{k}: {expression_text(v)}" for k, v in e.fields) + "}"
    if isinstance(e, n.Template):
        body = "".join(p if isinstance(p, str) else "{{" + expression_text(p) + "}}" for p in e.parts)
        return '"' + body.replace("\n", " ")[:60] + '"'
    return "?"
