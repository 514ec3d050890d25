"""Read scenario files and their imports into syntax trees.

In: a path (or text). Out: a Program (the root module, every imported module in dependency order,
and the text of each file for diagnostics), or a DiagnosticError. Whatever the bytes are (binary,
invalid UTF-8, an import cycle, an empty file), the result is diagnostics, never a traceback.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import nodes as n
from .build import build_module, parse_module
from .diagnostics import Diagnostic, DiagnosticError, Reporter
from .parser import parse_text

MAX_FILE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Program:
    root: n.Module
    modules: tuple[n.Module, ...]  # imports first, the root last
    sources: dict


def _point(file: str, line: int = 1, column: int = 1, width: int = 1) -> n.Span:
    return n.Span(file=file, line=line, column=column, end_line=line, end_column=column + width)


def decode_source(data: bytes, file: str) -> tuple[str | None, list[Diagnostic]]:
    """Bytes to text, or a diagnostic that says where the bytes stop being text."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        return None, [Diagnostic(code="E0014", message="the file is not valid UTF-8 text", span=_point(file, line, column),
                                 label=f"byte 0x{data[e.start]:02x} here",
                                 hint="save the scenario as UTF-8; is this a binary file?")]
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        column = nul - (text.rfind("\n", 0, nul) + 1) + 1
        return None, [Diagnostic(code="E0014", message="the file holds a NUL byte: it is binary, not a scenario",
                                 span=_point(file, line, column), label="NUL byte",
                                 hint="check that the right file was given")]
    return text, []


def parse_source(text: str, file: str) -> tuple[n.Module | None, list[Diagnostic]]:
    module = parse_module(text, file)  # the fast way, for text without errors
    if module is not None:
        return module, []
    tree, diagnostics = parse_text(text, file)
    if tree is None:
        return None, diagnostics
    return build_module(tree, file)


def display_path(path: str) -> str:
    """A path as the user should read it: relative to the working directory when below it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def load_program(path: str, text: str | None = None) -> Program:
    """Parse `path` (or `text` under that name) and every file it imports."""
    reporter = Reporter()
    modules: dict[str, n.Module] = {}
    order: list[n.Module] = []

    def visit(file_path: str, stack: list[str], via: n.Import | None, text: str | None = None) -> None:
        shown = display_path(file_path)
        key = os.path.abspath(file_path) if text is None else shown
        if key in stack:
            cycle = " -> ".join(display_path(p) for p in stack[stack.index(key):] + [key])
            reporter.error("E0016", via.span, "import cycle", label="this import closes a cycle",
                           hint=f"the cycle is {cycle}; move the shared declarations into a file both import")
            return
        if key in modules:
            return
        if text is None:
            try:
                size = os.path.getsize(file_path)
                if size > MAX_FILE_BYTES:
                    raise OSError(f"the file is {size} bytes, over the {MAX_FILE_BYTES} byte limit")
                with open(file_path, "rb") as f:
                    data = f.read()
            except OSError as e:
                span = via.span if via is not None else _point(shown)
                where = "imports are relative to the importing file" if via is not None else \
                    "it is relative to the current directory"
                reporter.error("E0015", span, f"cannot read `{shown}`", label=getattr(e, "strerror", None) or str(e),
                               hint=f"check the path; {where}")
                return
            text, diagnostics = decode_source(data, shown)
            if text is None:
                reporter.diagnostics.extend(diagnostics)
                return
        reporter.sources[shown] = text
        module, diagnostics = parse_source(text, shown)
        reporter.diagnostics.extend(diagnostics)
        if module is None:
            return
        modules[key] = module
        base = os.path.dirname(file_path)
        for decl in module.decls:
            if isinstance(decl, n.Import):
                visit(os.path.normpath(os.path.join(base, decl.path)), stack + [key], decl)
        order.append(module)

    visit(path, [], None, text)
    reporter.raise_if_errors()
    return Program(root=order[-1], modules=tuple(order), sources=dict(reporter.sources))
