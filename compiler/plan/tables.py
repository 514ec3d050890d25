"""Cells of the tables that personas sample from (CSV), read the same way by compiler and runtime.

In: a CSV cell's text. Out: its value: a whole number, a number, or the text itself.
"""
from __future__ import annotations


def table_cell(text: str):
    """A CSV cell as its value: whole number, number, or text."""
    for conv in (int, float):
        try:
            return conv(text)
        except (TypeError, ValueError):
            pass
    return text
