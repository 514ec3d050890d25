"""Environment kinds written in Python: the declaration API and how the compiler finds them.

Shared by compiler and runtime (it lives beside the plan, the one contract between them).

In: a Python class marked `@environment_kind("market")`, with typed `param(...)` attributes and
`@action(...)` / `@query(...)` methods; the scenario's `extensions = ["module", ...]` setting and
the `populace.environments` entry-point group say where such classes live.
Out: a KindSpec (the kind's name, its `module:Class`, parameters and method signatures) that the
compiler checks declarations and calls against, and that the runtime reads back from the class.
The compiler never calls the class's methods; only the runtime's driver does (runtime/extensions.py).
There is no global registry: the kinds a scenario sees are exactly those of its own extension
modules and of installed entry points, so one scenario's classes never leak into another's.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import re
import sys
import types as pytypes
from dataclasses import dataclass, field

ENTRY_POINT_GROUP = "populace.environments"
_REQUIRED = object()
PARAM_TYPES = (int, float, str, bool, "population")
VALUE_TYPES = (int, float, str, bool)
BUILT_IN_KINDS = ("board", "chatroom", "network", "grid", "python")
RESERVED = ("name", "seed", "start")  # attributes Populace sets or calls on every instance
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*$")


class ExtensionError(Exception):
    """A class or module that cannot serve as an environment kind (said in words for the user)."""


class DeclarationError(ExtensionError):
    """The module imports (or fails inside): its own code or declarations are at fault, not the path."""


@dataclass(frozen=True, slots=True)
class Param:
    type: object  # int, float, str, bool or "population"
    default: object = None
    required: bool = True
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    doc: str = ""


@dataclass(frozen=True, slots=True)
class Each:
    """An action argument that is one value per agent of the environment's population."""
    type: object


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    role: str  # "action" (a workflow statement) or "query" (a value in expressions and prompts)
    args: tuple  # python types, list[...] generics or Each(type) for actions
    returns: object = None  # queries: the value's python type
    per_agent: bool = False  # queries: one value per agent of the environment's population


@dataclass(frozen=True)
class KindSpec:
    kind: str
    target: str  # "module:Class", what the plan records and the runtime imports
    params: dict = field(default_factory=dict)  # name -> Param, in declaration order
    methods: dict = field(default_factory=dict)  # name -> Method
    doc: str = ""

    @property
    def population_param(self) -> str | None:
        return next((k for k, p in self.params.items() if p.type == "population"), None)

    def signature(self) -> str:
        """A hash of what the compiler checked (parameters and method signatures): the plan keeps
        it, and the runtime refuses a class whose declarations changed since compiling."""
        import hashlib

        def name(t):
            return t if isinstance(t, str) else (f"each({name(t.type)})" if isinstance(t, Each) else repr(t))

        text = repr((self.kind, sorted((k, name(p.type), p.required, repr(p.default), p.choices, p.low, p.high)
                                       for k, p in self.params.items()),
                     sorted((m.name, m.role, tuple(name(a) for a in m.args), name(m.returns), m.per_agent)
                            for m in self.methods.values())))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ the API users write against
def param(type, default=_REQUIRED, *, choices=(), low=None, high=None, doc: str = "") -> Param:
    """A typed parameter of the kind, given in the scenario: `market(traders, price = 12.5)`."""
    if type not in PARAM_TYPES:
        raise ExtensionError(f"param type must be int, float, str, bool or \"population\", not {type!r}")
    p = Param(type, None if default is _REQUIRED else default, default is _REQUIRED, tuple(choices), low, high, doc)
    if default is not _REQUIRED and default is not None:
        if type == "population":
            raise ExtensionError("a population parameter has no default: the scenario names it")
        problem = param_problem(p, default)
        if problem:
            raise ExtensionError(f"the default {default!r} does not fit: {problem}")
    for choice in p.choices:
        if not _fits_type(choice, type):
            raise ExtensionError(f"choice {choice!r} is not {type.__name__}")
    return p


def param_problem(p: Param, value) -> str | None:
    """Why `value` cannot be this parameter (type, choices, bounds), or None."""
    if not _fits_type(value, p.type):
        return f"must be {p.type.__name__}, not {type(value).__name__}"
    if p.choices and value not in p.choices:
        return "must be one of " + ", ".join(map(repr, p.choices))
    if (p.low is not None and value < p.low) or (p.high is not None and value > p.high):
        return f"must be in {'' if p.low is None else p.low}..{'' if p.high is None else p.high}, not {value}"
    return None


def _fits_type(value, t) -> bool:
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, t)


def each(type) -> Each:
    """Mark an action argument as one value per agent: `market.order(traders.side)`."""
    _check_value_type(type, "each()")
    return Each(type)


def action(*args):
    """A method the workflow calls as a statement: `market.order(traders.side)`.

    Called in the driver as `method(state, *values)`: an `each(T)` argument arrives as a list with
    one value per agent of the population, in agent id order (None where an agent has none); other
    arguments as one value. It changes `state` in place (or returns a new state dict).
    """
    for a in args:
        if not isinstance(a, Each):
            _check_value_type(a, "action()")
    return _mark("action", args)


def query(returns, *args, per_agent: bool = False):
    """A method that gives a value: `market.quote()` in expressions and prompts.

    Called in the driver as `method(state, *args)` with one-value arguments; returns one value of
    type `returns`, or with `per_agent=True` a sequence with one value per agent of the population.
    """
    _check_value_type(returns, "query()")
    for a in args:
        _check_value_type(a, "query()")
    if per_agent and returns not in VALUE_TYPES:
        raise ExtensionError("a per-agent query returns int, float, str or bool (one value per agent)")
    return _mark("query", args, returns, per_agent)


def environment_kind(kind: str):
    """Class decorator: the class becomes the environment kind `kind`."""
    from populace.dsl.build import keywords

    if not isinstance(kind, str) or not _NAME.match(kind):
        raise ExtensionError(f"an environment kind is a name like `market`, not {kind!r}")
    if kind in BUILT_IN_KINDS or kind in keywords():
        raise ExtensionError(f"`{kind}` is a built-in kind or a word of the language; choose another name")

    def mark(cls):
        params = {k: v for k, v in vars(cls).items() if isinstance(v, Param)}
        methods = {}
        for name, fn in vars(cls).items():
            sig = getattr(fn, "__populace_method__", None)
            if sig is not None:
                methods[name] = Method(name, *sig)
                _check_signature(cls, name, fn, len(sig[1]))
        clash = sorted(set(params) & set(RESERVED)) or sorted(set(params) & set(methods))
        if clash:
            raise ExtensionError(f"{cls.__qualname__}: a parameter cannot be called `{clash[0]}` "
                                 f"({'Populace sets it' if clash[0] in RESERVED else 'a method has that name'})")
        bad = [n for n in list(params) + list(methods) if not _NAME.match(n) or n in keywords()]
        if bad:
            raise ExtensionError(f"{cls.__qualname__}: `{bad[0]}` cannot be written in a scenario "
                                 "(a word of the language, or not a plain name)")
        if sum(p.type == "population" for p in params.values()) > 1:
            raise ExtensionError(f"{cls.__qualname__}: at most one parameter can be a population")
        if any(isinstance(a, Each) for m in methods.values() for a in m.args) or \
                any(m.per_agent for m in methods.values()):
            if not any(p.type == "population" for p in params.values()):
                raise ExtensionError(f"{cls.__qualname__}: per-agent methods need a param(\"population\")")
        if not callable(getattr(cls, "start", None)):
            raise ExtensionError(f"{cls.__qualname__}: an environment kind needs `start(self, agents)` "
                                 "returning its first state (a dict of JSON values)")
        cls.__populace_kind__ = KindSpec(kind, f"{cls.__module__}:{cls.__qualname__}", params, methods,
                                         (cls.__doc__ or "").strip())
        return cls

    return mark


def _check_signature(cls, name: str, fn, count: int) -> None:
    """The method must take (self, state) and one parameter per declared argument."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = list(sig.parameters.values())
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if not (len(required) <= 2 + count <= len(positional)):
        raise ExtensionError(f"{cls.__qualname__}.{name} declares {count} argument(s), so it must take "
                             f"(self, state{''.join(', a' + str(i + 1) for i in range(count))})")


def _mark(role, args, returns=None, per_agent=False):
    def mark(fn):
        fn.__populace_method__ = (role, tuple(args), returns, per_agent)
        return fn

    return mark


def _check_value_type(t, where: str) -> None:
    if t in VALUE_TYPES:
        return
    if isinstance(t, pytypes.GenericAlias) and t.__origin__ is list and len(t.__args__) == 1 \
            and t.__args__[0] in VALUE_TYPES:
        return
    raise ExtensionError(f"{where} takes int, float, str, bool or list[...] of them, not {t!r}")


# ------------------------------------------------------------------ finding kinds
def spec_of(obj) -> KindSpec | None:
    spec = getattr(obj, "__populace_kind__", None)
    return spec if isinstance(spec, KindSpec) else None


def module_kinds(module: str, folder: str | None = None) -> dict[str, KindSpec]:
    """Import `module` (the scenario's folder first on the path) and return its kinds by name."""
    if folder and folder not in sys.path:
        sys.path.insert(0, folder)  # stays: the driver imports the same module in this process
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ExtensionError(f"cannot import `{module}`: {e}") from None
    except ExtensionError as e:
        raise DeclarationError(f"`{module}`: {e}") from None
    except Exception as e:  # the user's module failed while importing: say how, not where in our code
        raise DeclarationError(f"importing `{module}` failed: {type(e).__name__}: {e}") from None
    local = os.path.join(folder, *module.split(".")) + ".py" if folder else None
    found = os.path.abspath(getattr(mod, "__file__", "") or "")
    if local and os.path.exists(local) and found != os.path.abspath(local):
        raise DeclarationError(f"`{module}` is already another module ({found or 'built in'}), so "
                               f"{os.path.basename(local)} next to the scenario is not used; rename it")
    kinds = {}
    for value in vars(mod).values():
        spec = spec_of(value)
        if spec is not None and isinstance(value, type) and value.__module__ == mod.__name__:
            kinds[spec.kind] = spec
    return kinds


def entry_point_kind(kind: str) -> KindSpec | None:
    """The kind an installed package offers under the `populace.environments` entry point `kind`."""
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name != kind:
            continue
        try:
            obj = ep.load()
        except Exception as e:  # an installed package that is broken: report it, do not crash
            raise ExtensionError(f"entry point `{ep.name} = {ep.value}` failed to load: {type(e).__name__}: {e}") from None
        spec = spec_of(obj)
        if spec is None:
            raise ExtensionError(f"entry point `{ep.name} = {ep.value}` is not marked @environment_kind")
        return spec
    return None


def load_class(target: str, folder: str | None = None):
    """The class named `module:Class` (for the runtime); ExtensionError if it is gone or changed."""
    module, _, qualname = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError:
        if not folder:
            raise ExtensionError(f"cannot import `{module}` for {target}") from None
        if folder not in sys.path:
            sys.path.insert(0, folder)
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise ExtensionError(f"cannot import `{module}` for {target}: {e}") from None
    obj = mod
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if spec_of(obj) is None:
        raise ExtensionError(f"{target} is not an @environment_kind class (any more)")
    return obj


__all__ = ["Param", "Each", "Method", "KindSpec", "ExtensionError", "param", "each", "action", "query",
           "environment_kind", "module_kinds", "entry_point_kind", "load_class", "spec_of", "ENTRY_POINT_GROUP"]
