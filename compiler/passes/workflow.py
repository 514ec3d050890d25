"""Pass 12, workflow: the workflow checked and lowered to plan steps in one walk; loops stay loops.

Checking and lowering share one walk here because a step's type (what `ask` returns, what a
`for` binds) is known only while lowering its scope. Reads: every declaration pass's tables. Adds: ctx.plan["workflow"], a list of steps, each
`{"id": "step:ask.guess", "op": "ask", ..., "span": {...}}` with nested `body` lists for loops and
branches. Ids are readable and stable: the op, a name, and `#2`, `#3` for repeats of the same id.
"""
from __future__ import annotations

import re

from populace.dsl import nodes as n
from populace.dsl.diagnostics import did_you_mean

from ..context import Context, Quiet, span_json
from ..expressions import Checker, Scope
from ..plan.evaluate import EvalError, evaluate, is_constant
from ..text import expression_text
from ..values import output_type
from ..types import ANY, INT, NUMERIC, Ty, assignable, describe, to_json


_NESTED_STEPS = ("body", "branches", "else")  # steps inside a step draw on their own


def _number_draw_sites(node, seen: list) -> None:
    """Give the 2nd, 3rd, ... random() or choice() of one step a `site`, so that each call draws its
    own numbers: `random() < 0.5 and random() < 0.5` must not test one draw twice."""
    if isinstance(node, list):
        for item in node:
            _number_draw_sites(item, seen)
        return
    if not isinstance(node, dict):
        return
    if node.get("call") in ("random", "choice"):
        if seen[0]:
            node["site"] = seen[0]
        seen[0] += 1
    for key, value in node.items():
        if key not in _NESTED_STEPS or "op" not in node:
            _number_draw_sites(value, seen)


class _Lowering:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.loop_depth = 0

    def step_id(self, base: str) -> str:
        count = self.ctx.step_ids.get(base, 0) + 1
        self.ctx.step_ids[base] = count
        return f"step:{base}" + (f"#{count}" if count > 1 else "")

    def block(self, stmts, variables: dict[str, Ty], loop_vars: set[str]) -> list[dict]:
        variables = dict(variables)
        out = []
        for s in stmts:
            step = self.stmt(s, variables, loop_vars)
            if step is not None:
                step["span"] = span_json(s.span)
                _number_draw_sites(step, [0])
                out.append(step)
        return out

    def driver(self, variables) -> Checker:
        return Checker(self.ctx, Scope("driver", variables=dict(variables)))

    def agent(self, pop: str, variables) -> Checker:
        return Checker(self.ctx, Scope("agent", pop=pop, variables=dict(variables)))

    def population(self, name: str, span: n.Span) -> bool:
        if name in self.ctx.populations:
            return True
        self.ctx.error("E1006", span, f"unknown population `{name}`", label="not declared in this scenario",
                       hint=did_you_mean(name, self.ctx.populations) or f"declare it: population {name} = N x AGENT")
        return False

    # ---------------------------------------------------------------- statements
    def stmt(self, s: n.Stmt, variables: dict, loop_vars: set) -> dict | None:
        method = getattr(self, "s_" + type(s).__name__)
        return method(s, variables, loop_vars)

    def s_Repeat(self, s: n.Repeat, variables, loop_vars):
        ty, count = self.driver(variables).value(s.count)
        if ty.kind not in ("int", "any"):
            self.ctx.error("E1031", s.count.span, f"repeat needs a whole number of times, not {describe(ty)}")
        elif is_constant(count) and isinstance(_known(count), int) and _known(count) < 0:
            self.ctx.error("E1031", s.count.span, f"repeat needs a count >= 0, not {_known(count)}")
        if s.var:
            self._new_name(s.var, self._var_span(s, rf"\bas\s+({s.var})\b"), variables)
        step = {"id": self.step_id("repeat" + (f".{s.var}" if s.var else "")), "op": "repeat", "count": count,
                "var": s.var}
        self.loop_depth += 1
        inner = dict(variables, **({s.var: INT} if s.var else {}))
        step["body"] = self.block(s.body.body, inner, loop_vars | ({s.var} if s.var else set()))
        self.loop_depth -= 1
        return step

    def s_For(self, s: n.For, variables, loop_vars):
        ty, iterable = self.driver(variables).value(s.iterable)
        if ty.kind not in ("list", "any"):
            self.ctx.error("E1031", s.iterable.span, f"for needs a list, not {describe(ty)}", hint="e.g. for t in [0.5, 1.0]")
        self._new_name(s.var, self._var_span(s, rf"\bfor\s+({s.var})\b"), variables)
        item = ty.item if ty.kind == "list" and ty.item else ANY
        step = {"id": self.step_id(f"for.{s.var}"), "op": "for", "var": s.var, "iterable": iterable}
        self.loop_depth += 1
        step["body"] = self.block(s.body.body, dict(variables, **{s.var: item}), loop_vars | {s.var})
        self.loop_depth -= 1
        return step

    def _var_span(self, s: n.Stmt, pattern: str) -> n.Span:
        """The span of a loop's variable: the node keeps only the statement's span, so find it in the source."""
        lines = self.ctx.reporter.sources.get(s.span.file, "").splitlines()
        if s.span.line <= len(lines):
            found = re.compile(pattern).search(lines[s.span.line - 1], s.span.column - 1)
            if found:
                return n.Span(file=s.span.file, line=s.span.line, column=found.start(1) + 1,
                              end_line=s.span.line, end_column=found.end(1) + 1)
        return s.span

    def _new_name(self, name: str, span: n.Span, variables) -> None:
        if name in RESERVED_COLUMNS:
            self.ctx.error("E1044", span, f"`{name}` is a column every record row already has",
                           label="reserved name", hint=f"choose another name, e.g. {name}s or {name}_no")
            return
        taken = ("a population" if name in self.ctx.populations else "an environment" if name in self.ctx.environments
                 else "a group set" if name in self.ctx.groups else "a keyword" if name in ("param", "persona", "self") else None)
        if taken:
            self.ctx.error("E1034", span, f"`{name}` already names {taken}", hint="choose another name")
        elif name in variables:
            self.ctx.error("E1034", span, f"`{name}` is already a variable here", hint="choose another name")

    def s_If(self, s: n.If, variables, loop_vars):
        branches = []
        for cond, block in s.branches:
            branches.append({"cond": self.driver(variables).condition(cond),
                             "body": self.block(block.body, variables, loop_vars)})
        orelse = self.block(s.orelse.body, variables, loop_vars) if s.orelse else []
        return {"id": self.step_id("if"), "op": "if", "branches": branches, "else": orelse}

    def s_Stop(self, s: n.Stop, variables, loop_vars):
        if s.scope == "loop" and self.loop_depth == 0:
            self.ctx.error("E1033", s.span, "`break when` outside a loop", hint="use `stop when` to end the run")
        cond = self.driver(variables).condition(s.condition)
        return {"id": self.step_id("stop" if s.scope == "run" else "break"), "op": "stop", "scope": s.scope, "cond": cond}

    def s_Ask(self, s: n.Ask, variables, loop_vars):
        if not self.population(s.population, s.population_span):
            return None
        checker = self.agent(s.population, variables)
        where = checker.condition(s.where) if s.where is not None else None
        ty, prompt = checker.expr(s.prompt)
        model = None
        if s.model is not None:
            if s.model not in self.ctx.models and s.model not in self.ctx.decls["model"]:
                self.ctx.error("E1003", s.model_span, f"unknown model `{s.model}`", hint=did_you_mean(s.model, self.ctx.decls["model"]))
            model = s.model
        out_ty = output_type(Quiet(self.ctx), s.output.type)  # reported once, by check_populations
        step = {"id": self.step_id(f"ask.{s.output.name}"), "op": "ask", "population": s.population, "where": where,
                "model": model, "prompt": prompt, "per_agent_prompt": ty.per_agent,
                "output": {"name": s.output.name, "type": to_json(out_ty)}}
        if s.in_order:
            self._check_in_order(s, prompt, where)
            step["in_order"] = True
        if s.verbatim:
            step["verbatim"] = True
        return step

    def _check_in_order(self, s: n.Ask, prompt: dict, where: dict | None) -> None:
        """An ordered ask updates, after each answer, the aggregates of the asked population its prompt
        shows; only those that a running total gives exactly are allowed (count, sum, mean, share, std)."""
        for node in _walk([prompt, where]):
            if "agg" in node and "via" not in node and node.get("pop") == s.population \
                    and node["agg"] not in _RUNNING:
                self.ctx.error("E1038", s.span, f"`{node['agg']}` of `{s.population}` cannot be kept up to date "
                               "answer by answer in an ordered ask",
                               hint="use count, sum, mean, share or std, or ask without `in order`")
                return
            if "via" in node:
                self.ctx.error("E1038", s.span, "an ordered ask's prompt cannot use group or neighbour aggregates yet",
                               hint="use aggregates over the population (count, sum, mean, share, std)")
                return

    def s_Tell(self, s: n.Tell, variables, loop_vars):
        target, receivers = self._tell_target(s, variables)
        if target is None:
            return None
        sender = s.sender
        if sender is not None and not self.population(sender, s.sender_span):
            return None
        if target["kind"] in ("group", "neighbors") and sender is None:
            self.ctx.error("E1037", s.target.span, "telling a group or neighbours needs a sender: tell ... from POP",
                           hint=f"e.g. tell {expression_text(s.target)} from {receivers} \"...\"")
            return None
        speaker = sender or (receivers if target["kind"] == "population" else None)
        checker = self.agent(speaker, variables) if speaker else self.driver(variables)
        where = None
        if s.where is not None:
            if speaker is None:
                self.ctx.error("E1037", s.where.span, "`where` needs a population to filter")
            else:
                where = checker.condition(s.where)
        ty, message = checker.expr(s.message)
        return {"id": self.step_id("tell"), "op": "tell", "target": target, "sender": sender, "where": where,
                "message": message}

    def _tell_target(self, s: n.Tell, variables):
        t = s.target
        if isinstance(t, n.Name) and t.id in self.ctx.populations:
            return {"kind": "population", "population": t.id}, t.id
        if isinstance(t, n.Name) and t.id in self.ctx.groups:
            g = self.ctx.groups[t.id]
            return {"kind": "group", "group": t.id, "population": g["population"]}, g["population"]
        if isinstance(t, n.Call) and isinstance(t.func, n.Name) and t.func.id == "neighbors" and len(t.args) == 1 \
                and isinstance(t.args[0].value, n.Name) and t.args[0].value.id in self.ctx.environments:
            env = self.ctx.environments[t.args[0].value.id]
            if env["kind"] not in ("network", "grid"):
                self.ctx.error("E1030", t.span, f"`{env['name']}` is a {env['kind']}: neighbours exist in networks and grids")
                return None, None
            return {"kind": "neighbors", "env": env["name"], "population": env.get("population")}, env.get("population")
        if isinstance(t, n.Index) and isinstance(t.value, n.Name) and t.value.id in self.ctx.populations:
            ty, index = self.driver(variables).value(t.index)
            if ty.kind not in ("int", "any"):
                self.ctx.error("E1010", t.index.span, "an agent is picked by a whole-number index")
            return {"kind": "agent", "population": t.value.id, "index": index}, t.value.id
        self.ctx.error("E1006", t.span, "tell needs a population, a group set, neighbors(net) or one agent like players[0]",
                       hint=did_you_mean(getattr(t, "id", ""), list(self.ctx.populations) + list(self.ctx.groups)))
        return None, None

    def s_Broadcast(self, s: n.Broadcast, variables, loop_vars):
        if s.population is not None and not self.population(s.population, s.population_span):
            return None
        ty, message = self.driver(variables).value(s.message)
        pops = [s.population] if s.population else sorted(self.ctx.populations)
        return {"id": self.step_id("broadcast"), "op": "broadcast", "populations": pops, "message": message}

    def s_Let(self, s: n.Let, variables, loop_vars):
        self._new_name(s.name, s.name_span, variables)
        ty, value = self.driver(variables).value(s.value)
        variables[s.name] = ty
        return {"id": self.step_id(f"let.{s.name}"), "op": "let", "name": s.name, "value": value}

    def s_Assign(self, s: n.Assign, variables, loop_vars):
        t = s.target
        if isinstance(t, n.Name):
            if t.id in loop_vars:
                self.ctx.error("E1015", t.span, f"`{t.id}` is a loop variable and cannot be assigned")
                return None
            if t.id not in variables:
                self.ctx.error("E1002", t.span, f"unknown variable `{t.id}`", hint=f"declare it first: let {t.id} = ...")
                return None
            ty, value = self.driver(variables).value(s.value)
            self._check_update(s, variables[t.id], ty)
            if s.where is not None:
                self.ctx.error("E1037", s.where.span, "`where` filters agents; a variable is one value")
            return {"id": self.step_id(f"set.{t.id}"), "op": "set_var", "name": t.id, "operator": s.op, "value": value}
        if isinstance(t, n.Attr) and isinstance(t.value, n.Name):
            base = t.value.id
            if base in self.ctx.environments:
                fields = self.ctx.env_fields[base]
                if t.attr not in fields:
                    self.ctx.error("E1007", t.span, f"environment `{base}` has no field `{t.attr}`",
                                   hint=did_you_mean(t.attr, fields) or "declare the field in the environment block")
                    return None
                ty, value = self.driver(variables).value(s.value)
                self._check_update(s, fields[t.attr], ty)
                if s.where is not None:
                    self.ctx.error("E1037", s.where.span, "`where` filters agents; an environment field is one value")
                return {"id": self.step_id(f"set.{base}.{t.attr}"), "op": "set_env", "env": base, "field": t.attr,
                        "operator": s.op, "value": value}
            if base in self.ctx.populations:
                info = self.ctx.population_fields[base].get(t.attr)
                if info is None:
                    self.ctx.error("E1009", t.span, f"`{base}` has no field `{t.attr}`",
                                   hint=did_you_mean(t.attr, self.ctx.population_fields[base]) or
                                   "declare it in the agent: state NAME: TYPE = DEFAULT")
                    return None
                if info.source != "state":
                    self.ctx.error("E1015", t.span, f"`{base}.{t.attr}` is {'an' if info.source[:1] in 'aeiou' else 'a'} {info.source} field and cannot be assigned",
                                   hint="only state fields change during a run; declare state NAME: TYPE = DEFAULT")
                    return None
                checker = self.agent(base, variables)
                ty, value = checker.expr(s.value)
                self._check_update(s, info.ty, ty)
                where = checker.condition(s.where) if s.where is not None else None
                return {"id": self.step_id(f"set.{base}.{t.attr}"), "op": "set_state", "population": base,
                        "field": t.attr, "operator": s.op, "value": value, "where": where}
            if base == "param":
                self.ctx.error("E1015", t.span, "params are fixed for a run", hint="use a let variable or an environment field")
                return None
            if base in ("persona", "self"):
                self.ctx.error("E1015", t.span, f"assign agent state through its population, e.g. players.{t.attr} = ...")
                return None
        self.ctx.error("E1015", t.span, "this cannot be assigned",
                       hint="assign to a let variable, an environment field (env.field) or agent state (pop.field)")
        return None

    def _check_update(self, s: n.Assign, target: Ty, value: Ty) -> None:
        if value.kind == "any" or target.kind == "any":
            return
        if s.op == "=":
            ok = assignable(target, value)
        elif s.op == "+=" and target.kind == "list":
            ok = assignable(target.item or ANY, value) or assignable(target, value)
        elif s.op == "+=" and target.kind == "str":
            ok = value.kind in ("str", "enum")
        elif s.op == "/=" and target.kind == "int":
            self.ctx.error("E1010", s.value.span, f"`{expression_text(s.target)}` holds whole numbers; `/=` makes a float",
                           hint=f"use {expression_text(s.target)} = {expression_text(s.target)} // ..., or declare it float")
            return
        else:
            ok = target.kind in NUMERIC and value.kind in NUMERIC and not (target.kind == "int" and value.kind == "float")
            if not ok and target.kind == "int" and value.kind == "float":
                self.ctx.error("E1010", s.value.span, f"`{expression_text(s.target)}` holds whole numbers; this is a float",
                               hint="round it: round(...)")
                return
        if not ok:
            self.ctx.error("E1010", s.value.span, f"`{expression_text(s.target)}` is {describe(target)}; "
                           f"`{s.op}` cannot take {describe(value.scalar())}")

    def s_Record(self, s: n.Record, variables, loop_vars):
        items, names = [], set()  # a row also holds the variables in scope: an item must not shadow one
        by, by_pop = [], None
        for item in s.by:
            name = item.name or (item.value.attr if isinstance(item.value, n.Attr) else expression_text(item.value))
            if self._record_name(name, item, names, variables):
                continue
            ty, value = self._by_key(item.value)
            if ty is None:
                continue
            if by_pop not in (None, ty.pop):
                self.ctx.error("E1039", item.value.span, f"the keys of one `by` must belong to one population, not "
                               f"`{by_pop}` and `{ty.pop}`")
                continue
            by_pop = ty.pop
            by.append({"name": name, "value": value, "type": to_json(ty.scalar())})
        for item in s.items:
            name = item.name or expression_text(item.value)
            if self._record_name(name, item, names, variables):
                continue
            ty, value = self.driver(variables).value(item.value)
            items.append({"name": name, "value": value, "type": to_json(ty.scalar())})
        step = {"id": self.step_id("record"), "op": "record", "items": items}
        if s.table is not None:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", s.table) or s.table == "metrics":
                self.ctx.error("E1043", s.span, f"`{s.table}` cannot name a table",
                               hint='a table is named like a variable, e.g. record "prices" ..., and `metrics` is the '
                                    "table of unnamed records")
            step["table"] = s.table
        if by:
            step["by"] = by
        return step

    def _record_name(self, name: str, item, names: set, variables) -> bool:
        """True (and a diagnostic) when a column name is taken: by another item, a variable in scope,
        or a name every row already has."""
        if name in RESERVED_COLUMNS:
            self.ctx.error("E1044", item.span, f"`{name}` is a column every record row already has",
                           label="reserved column name", hint=f"name the value, e.g. record {name}_value = ...")
            return True
        if name in names:
            self.ctx.error("E1001", item.span, f"`{name}` is recorded twice in this record",
                           hint="name this value differently")
            return True
        if name in variables and not (isinstance(item.value, n.Name) and item.value.id == name):
            # `record round` is the loop variable itself; `record round = x` would overwrite it in the row
            self.ctx.error("E1001", item.span, f"`{name}` is a variable in scope, and every row already holds it",
                           hint=f"name this value differently, e.g. {name}_value = ...")
            return True
        names.add(name)
        return False

    def _by_key(self, e: n.Expr):
        """A `by` key: one value per agent of a population (a field, `kind`, or an expression of them)."""
        ty, value = Checker(self.ctx, Scope("driver")).expr(e)
        if ty.kind == "any":
            return None, None
        if not ty.per_agent or not ty.pop or ty.pop.startswith("group:"):
            self.ctx.error("E1039", e.span, f"`{expression_text(e)}` is one value; `by` groups agents by a field",
                           hint="e.g. record round, m = mean(players.x) by players.kind")
            return None, None
        if ty.scalar().kind not in ("int", "bool", "str", "enum", "any"):
            self.ctx.error("E1039", e.span, f"`by` groups by whole numbers, true/false or text, not {describe(ty.scalar())}",
                           hint="round it first, e.g. by bucket = round(players.x * 10)")
            return None, None
        return ty, value

    def s_Regroup(self, s: n.Regroup, variables, loop_vars):
        group = self.ctx.groups.get(s.group)
        if group is None:
            self.ctx.error("E1045", s.group_span, f"unknown group set `{s.group}`",
                           hint=did_you_mean(s.group, self.ctx.groups) or "declare it: group POP by SIZE as NAME")
            return None
        if group.get("by_field") is not None:
            self.ctx.error("E1045", s.group_span, f"`{s.group}` groups by a field; only random groups can be drawn anew",
                           hint=f"declare it by size, e.g. group {group['population']} by 2 as {s.group}")
            return None
        return {"id": self.step_id(f"regroup.{s.group}"), "op": "regroup", "group": s.group}

    def s_Snapshot(self, s: n.Snapshot, variables, loop_vars):
        if not self.population(s.population, s.population_span):
            return None
        return {"id": self.step_id(f"snapshot.{s.population}"), "op": "snapshot", "population": s.population}

    def s_CallStmt(self, s: n.CallStmt, variables, loop_vars):
        call = s.call
        if not (isinstance(call.func, n.Attr) and isinstance(call.func.value, n.Name)
                and call.func.value.id in self.ctx.environments):
            self.ctx.error("E1013", call.span, "a statement call is a method of an environment, e.g. feed.post(players.text)")
            return None
        env = self.ctx.environments[call.func.value.id]
        pop = env.get("population") or env.get("params", {}).get("members") or env.get("members")
        checker = self.agent(pop, variables) if pop else self.driver(variables)
        ty, ir = checker._env_method(call, statement=True)
        if "method" not in ir:
            return None
        return {"id": self.step_id(f"call.{env['name']}.{call.func.attr}"), "op": "call", "env": env["name"],
                "method": ir["method"], "args": ir["args"], "population": pop}


# Columns every record row has (the step id, a named record's table): an item cannot take their names.
RESERVED_COLUMNS = ("step", "table")
_RUNNING = ("count", "sum", "mean", "share", "std")


def _walk(expr):
    if isinstance(expr, dict):
        yield expr
        for v in expr.values():
            yield from _walk(v)
    elif isinstance(expr, (list, tuple)):
        for v in expr:
            yield from _walk(v)


def _known(expr: dict):
    try:
        return evaluate(expr)
    except EvalError:
        return 0  # e.g. a division by zero: the runtime reports it at this step, with its span


def check_workflow(ctx: Context) -> None:
    """Type-check every statement and lower the workflow to steps."""
    lowering = _Lowering(ctx)
    if not ctx.workflow:
        ctx.plan["workflow"] = []
        return
    ctx.plan["workflow"] = lowering.block(ctx.workflow[0].body.body, {}, set())
