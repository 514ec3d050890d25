"""Parse an LLM's reply text into an ask's output type, or say what is wrong with it.

In: reply text and a plan output type. Out: (value, None) or (None, a message that both the run
records and the re-ask quotes to the model). Replies are data: nothing in them is evaluated.
"""
from __future__ import annotations

import json
import re

_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?(?:[eE][-+]?\d+)?")
_TRUE = ("true", "yes", "y")
_FALSE = ("false", "no", "n")


def describe(ty: dict) -> str:
    kind = ty["kind"]
    if kind in ("int", "float"):
        what = "one whole number" if kind == "int" else "one number"
        if "min" in ty and "max" in ty:
            return f"{what} from {_n(ty['min'])} to {_n(ty['max'])}"
        return what
    if kind == "bool":
        return "yes or no"
    if kind == "enum":
        return "exactly one of: " + ", ".join(str(v) for v in ty["values"])
    if kind == "str":
        return "your answer as text"
    if kind == "record":
        return "a JSON object with the fields " + ", ".join(f"{k} ({describe(v)})" for k, v in ty["fields"].items())
    if kind == "list":
        return f"a JSON list of {describe(ty['item'])}"
    return "your answer"


def _n(x) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def instruction(ty: dict) -> str:
    """What the model is told to reply, appended to the prompt."""
    if ty["kind"] == "str":
        return ""
    return f"Reply with {describe(ty)} only."


def parse(text: str | None, ty: dict):
    if text is None:
        return None, "the model sent no text"
    raw = text.strip()
    kind = ty["kind"]
    if kind in ("int", "float"):
        return _number(raw, ty)
    if kind == "bool":
        word = raw.strip(" .!\"'`*").lower()
        if word in _TRUE:
            return True, None
        if word in _FALSE:
            return False, None
        words = set(re.findall(r"[a-z]+", raw.lower()))
        yes, no = bool(words & set(_TRUE)), bool(words & set(_FALSE))
        if yes != no:
            return yes, None
        return None, f"{_quote(raw)} is not yes or no"
    if kind == "enum":
        values = [str(v) for v in ty["values"]]
        exact = [v for v in values if raw.strip(" .!\"'`*").lower() == v.lower()]
        if exact:
            return ty["values"][values.index(exact[0])], None
        found = [v for v in values if re.search(rf"(?<![\w-]){re.escape(v.lower())}(?![\w-])", raw.lower())]
        if len(found) == 1:
            return ty["values"][values.index(found[0])], None
        return None, f"{_quote(raw)} is not exactly one of {', '.join(values)}"
    if kind == "str":
        return raw, None
    if kind in ("record", "list"):
        return _json(raw, ty)
    return raw, None


def _number(raw: str, ty: dict):
    found = _NUMBER.findall(raw)
    if len(found) != 1:
        return None, (f"{_quote(raw)} holds no number" if not found else f"{_quote(raw)} holds several numbers")
    text = found[0].replace(",", ".")
    value = float(text)
    if ty["kind"] == "int":
        if not value.is_integer():
            return None, f"{text} is not a whole number"
        value = int(value)
    if "min" in ty and value < ty["min"] or "max" in ty and value > ty["max"]:
        return None, f"{text} is outside {_n(ty.get('min', '-inf'))}..{_n(ty.get('max', 'inf'))}" \
            if "min" in ty and "max" in ty else f"{text} is out of range"
    return value, None


def _json(raw: str, ty: dict):
    opener = "{" if ty["kind"] == "record" else "["
    closer = "}" if opener == "{" else "]"
    start, end = raw.find(opener), raw.rfind(closer)
    if start < 0 or end < start:
        return None, f"{_quote(raw)} is not {describe(ty)}"
    try:
        value = json.loads(raw[start:end + 1])
    except json.JSONDecodeError as e:
        return None, f"the JSON is malformed ({e.msg})"
    if ty["kind"] == "list":
        if not isinstance(value, list):
            return None, "not a JSON list"
        out = []
        for item in value:
            v, err = parse(json.dumps(item) if not isinstance(item, str) else item, ty["item"])
            if err:
                return None, f"item {item!r}: {err}"
            out.append(v)
        return out, None
    if not isinstance(value, dict):
        return None, "not a JSON object"
    out = {}
    for name, fty in ty["fields"].items():
        if name not in value:
            return None, f"the field `{name}` is missing"
        item = value[name]
        v, err = parse(item if isinstance(item, str) else json.dumps(item), fty)
        if err:
            return None, f"field `{name}`: {err}"
        out[name] = v
    return out, None


def _quote(raw: str) -> str:
    text = raw if len(raw) <= 60 else raw[:57] + "..."
    return json.dumps(text)


def reask(error: str, ty: dict) -> str:
    return f"Your reply was not understood: {error}. Reply with {describe(ty)} only."
