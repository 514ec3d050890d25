"""Diagnostics: the error records every stage reports, and their rendering for people and editors.

In: a code, a span, a message, an optional label (words under the caret) and hint.
Out: text like ruff's (`error[E0203]: ...`, `--> file:line:col`, the line, a caret) or JSON.
Stages collect diagnostics in a Reporter and keep going; only a pipeline raises DiagnosticError.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field

from .nodes import Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Diagnostic:
    code: str
    message: str
    span: Span
    label: str = ""
    hint: str = ""
    severity: str = "error"  # error | warning


class DiagnosticError(Exception):
    """Raised by a pipeline stage with every diagnostic it collected. Survives pickling."""

    def __init__(self, diagnostics: list[Diagnostic], sources: dict[str, str] | None = None):
        super().__init__(f"{len(diagnostics)} error(s)")
        self.diagnostics = list(diagnostics)
        self.sources = dict(sources or {})

    def __reduce__(self):
        return (DiagnosticError, (self.diagnostics, self.sources))

    def render(self) -> str:
        return render_all(self.diagnostics, self.sources)


@dataclass
class Reporter:
    """Collects diagnostics for one stage; `sources` maps a file name to its text for excerpts."""

    sources: dict[str, str] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def error(self, code: str, span: Span, message: str, *, label: str = "", hint: str = "") -> None:
        self.diagnostics.append(Diagnostic(code=code, message=message, span=span, label=label, hint=hint))

    def warning(self, code: str, span: Span, message: str, *, label: str = "", hint: str = "") -> None:
        self.diagnostics.append(
            Diagnostic(code=code, message=message, span=span, label=label, hint=hint, severity="warning")
        )

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    def raise_if_errors(self) -> None:
        if self.errors:
            raise DiagnosticError(sorted_diagnostics(self.diagnostics), self.sources)


def sorted_diagnostics(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    # Stable, readable order: by file, then position, then code; duplicates dropped.
    seen, out = set(), []
    for d in sorted(diagnostics, key=lambda d: (d.span.file, d.span.line, d.span.column, d.code, d.message)):
        key = (d.code, d.span.file, d.span.line, d.span.column, d.message)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def did_you_mean(name: str, candidates) -> str:
    """A hint naming the closest candidate, or an empty string."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else ""


_MAX_EXCERPT = 160  # a 10 MB line must not become a 10 MB diagnostic


def render(d: Diagnostic, sources: dict[str, str]) -> str:
    span = d.span
    lines = [f"{d.severity}[{d.code}]: {d.message}", f"  --> {span.file}:{span.line}:{span.column}"]
    text = sources.get(span.file)
    src_lines = text.splitlines() if text is not None else []
    if 1 <= span.line <= len(src_lines):
        source_line = src_lines[span.line - 1].expandtabs(1)
        start = span.column - 1
        end = span.end_column - 1 if span.end_line == span.line else len(source_line)
        end = max(end, start + 1)
        # Long lines are cut to a window around the caret so the excerpt stays readable.
        offset = 0
        if len(source_line) > _MAX_EXCERPT:
            offset = max(0, start - 40)
            source_line = ("..." if offset else "") + source_line[offset : offset + _MAX_EXCERPT] + "..."
            shift = 3 if offset else 0
            start, end = start - offset + shift, min(end - offset + shift, len(source_line))
        gutter = " " * len(str(span.line))
        lines.append(f"{gutter} |")
        lines.append(f"{span.line} | {source_line.rstrip()}")
        caret = " " * start + "^" * max(1, min(end - start, len(source_line) - start if len(source_line) > start else 1))
        lines.append(f"{gutter} | {caret}{(' ' + d.label) if d.label else ''}")
    elif d.label:
        lines.append(f"   = note: {d.label}")
    if d.hint:
        lines.append(f"   = hint: {d.hint}")
    return "\n".join(lines)


def render_all(diagnostics: list[Diagnostic], sources: dict[str, str]) -> str:
    parts = [render(d, sources) for d in diagnostics]
    n_err = sum(d.severity == "error" for d in diagnostics)
    n_warn = len(diagnostics) - n_err
    summary = f"{n_err} error{'s' if n_err != 1 else ''}"
    if n_warn:
        summary += f", {n_warn} warning{'s' if n_warn != 1 else ''}"
    return "\n\n".join(parts) + f"\n\n{summary}"


def to_json(diagnostics: list[Diagnostic]) -> str:
    return json.dumps([asdict(d) for d in diagnostics], indent=2, sort_keys=True)
