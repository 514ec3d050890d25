"""Explain a compiled plan for people: what will run, how many LLM calls, tokens and dollars.

In: a Compiled (or a plan dict). Out: plain text, deterministic (a golden test compares it): the
populations with sizes, kinds, models and shard limit; the steps in order with loop counts; for each
`ask` and each persona `write`, the agents asked, calls per model, estimated input and output tokens,
cost, and how many distinct prompts remain after de-duplication; totals at the end.

Estimates, not measurements: a token is 4 characters; an interpolated value counts as a typical size
for its type; memory holds the last N exchanges of the same size as this one; a free-text answer
uses the model's max_tokens. Loop counts multiply when they are known before the run.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from .passes.personas import persona_refs
from .types import describe, from_json

CHARS_PER_TOKEN = 4
VALUE_CHARS = {"int": 4, "float": 6, "bool": 5, "none": 4, "list": 60, "record": 80, "any": 20}
TEXT_CHARS = 400  # a str value: a written background, a post
SHORT_ANSWER_TOKENS = {"int": 4, "float": 6, "bool": 3, "enum": 4, "list": 40, "record": 60}
DEFAULT_MAX_TOKENS = 256
MAX_CATEGORIES = 1000  # an int range wider than this is not a category


@dataclass
class _Usage:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    cost_known: bool = True
    cache_read: int = 0  # input tokens the provider's prompt cache could serve (estimate)
    cache_write: int = 0
    cache_short: int = 0  # tokens of system prompts too short to be cached


@dataclass
class _Explainer:
    plan: dict
    lines: list = field(default_factory=list)
    usage: dict = field(default_factory=dict)  # model -> _Usage
    bounded: bool = True  # False once a count is unknown before the run (totals are then per known part)
    budget: float | None = None  # dollars (--budget, else the scenario's `budget`)

    # ---------------------------------------------------------------- expression text
    def text(self, ir) -> str:
        """Readable text of a plan expression, without parentheses around the whole."""
        text = self._text(ir)
        if text.startswith("(") and text.endswith(")"):
            depth = 0
            for i, ch in enumerate(text):
                depth += {"(": 1, ")": -1}.get(ch, 0)
                if depth == 0 and i < len(text) - 1:
                    return text  # `(a) + (b)`: the first paren closes early
            return text[1:-1]
        return text

    def _text(self, ir) -> str:
        if not isinstance(ir, dict):
            return json.dumps(ir)
        if "lit" in ir:
            return "none" if ir["lit"] is None else json.dumps(ir["lit"])
        if "var" in ir:
            return ir["var"]
        if "env" in ir and "field" in ir:
            return f"{ir['env']}.{ir['field']}"
        if "col" in ir:
            owner = ir.get("pop") or "persona"
            owner = "persona" if owner.startswith("agent:") or ir.get("src") == "persona" and "pop" not in ir else owner
            if "via" in ir:
                via = ir["via"]
                owner = f"neighbors({via['neighbors']})" if "neighbors" in via else via["group"]
            return f"{owner}.{ir['col']}"
        if "agg" in ir:
            extra = "".join(f", {k} = {json.dumps(v)}" for k, v in sorted(ir["params"].items()))
            return f"{ir['agg']}({self.text(ir['arg'])}{extra})"
        if "op" in ir:
            args = [self._text(a) for a in ir["args"]]
            if ir["op"] == "neg":
                return f"-{args[0]}"
            if ir["op"] == "not":
                return f"not {args[0]}"
            return f"({args[0]} {ir['op']} {args[1]})"
        if "call" in ir:
            return f"{ir['call']}({', '.join(self.text(a) for a in ir['args'])})"
        if "method" in ir:
            return f"{ir['env']}.{ir['method']}({', '.join(self.text(a) for a in ir['args'])})"
        if "if" in ir:
            return f"({self._text(ir['then'])} if {self._text(ir['if'])} else {self._text(ir['else'])})"
        if "list" in ir:
            return "[" + ", ".join(self.text(a) for a in ir["list"]) + "]"
        if "record" in ir:
            return "{" + ", ".join(f"{k}: {self.text(v)}" for k, v in ir["record"].items()) + "}"
        if "get" in ir:
            return f"{self.text(ir['get'])}.{ir['field']}"
        if "index" in ir:
            return f"{self.text(ir['index'][0])}[{self.text(ir['index'][1])}]"
        if "template" in ir:
            body = "".join(p if isinstance(p, str) else "{{" + self.text(p) + "}}" for p in ir["template"])
            body = " ".join(body.split())
            return '"' + (body[:57] + "..." if len(body) > 60 else body) + '"'
        return "?"

    # ---------------------------------------------------------------- sizes of prompts
    def field_type(self, persona: str | None, population: str | None, ir: dict) -> dict:
        if ir.get("src") == "persona" and persona:
            for f in self.plan["personas"].get(persona, {}).get("fields", ()):
                if f["name"] == ir["col"]:
                    return f["type"]
        pop = self.plan["populations"].get(population or "", {})
        if ir.get("src") == "state" and ir["col"] in pop.get("state", {}):
            return pop["state"][ir["col"]]["type"]
        if ir.get("src") == "output" and ir["col"] in pop.get("outputs", {}):
            return pop["outputs"][ir["col"]]
        return {"kind": "any"}

    def value_chars(self, ty: dict) -> int:
        if ty["kind"] == "str":
            return TEXT_CHARS
        if ty["kind"] == "enum":
            return max((len(str(v)) for v in ty.get("values", ())), default=4)
        return VALUE_CHARS.get(ty["kind"], 20)

    def template_chars(self, ir, persona: str | None, population: str | None) -> int:
        """Characters of a prompt: its static text plus a typical size for each interpolated value."""
        if ir is None:
            return 0
        if isinstance(ir.get("lit"), str):  # a text without interpolation: its own length
            return len(ir["lit"])
        if "template" not in ir:
            return self.part_chars(ir, persona, population)
        total = 0
        for part in ir["template"]:
            total += len(part) if isinstance(part, str) else self.part_chars(part, persona, population)
        return total

    def part_chars(self, ir: dict, persona, population) -> int:
        written = self.written_chars(persona, ir)
        return written if written is not None else self.value_chars(self.expr_type(ir, persona, population))

    def written_chars(self, persona: str | None, ir: dict) -> int | None:
        """A persona text written by a model is about as long as that model writes: a mock's words,
        or half of an LLM's max_tokens (capped at TEXT_CHARS)."""
        if ir.get("src") != "persona" or not persona:
            return None
        for f in self.plan["personas"].get(persona, {}).get("fields", ()):
            if f["name"] == ir.get("col") and f["kind"] == "write":
                model = self.plan["models"].get(f["model"], {})
                settings = model.get("settings", {})
                if model.get("provider") == "mock":
                    return 6 * int(settings.get("words", 12))
                return min(TEXT_CHARS, 2 * CHARS_PER_TOKEN * int(settings.get("max_tokens", DEFAULT_MAX_TOKENS)))
        return None

    def expr_type(self, ir: dict, persona, population) -> dict:
        if "col" in ir and "via" not in ir:
            return self.field_type(persona, population, ir)
        if "env" in ir and "field" in ir:
            return self.plan["environments"].get(ir["env"], {}).get("fields", {}).get(ir["field"], {}).get("type", {"kind": "any"})
        if "lit" in ir:
            v = ir["lit"]
            return {"kind": "str"} if isinstance(v, str) and len(v) > 20 else {"kind": "int"}
        if "agg" in ir:
            return {"kind": "record"} if ir["agg"] == "histogram" else {"kind": "float"}
        if "method" in ir:
            return {"kind": "list"} if ir["method"] == "recent" else {"kind": "int"}
        return {"kind": "any"}

    # ---------------------------------------------------------------- de-duplication
    def persona_fields(self, persona: str | None) -> dict:
        return {f["name"]: f for f in self.plan["personas"].get(persona or "", {}).get("fields", ())}

    def basis(self, persona: str | None, name: str, seen=()) -> set | None:
        """The categorical sampled fields a persona field is a function of, or None (one value per agent)."""
        f = self.persona_fields(persona).get(name)
        if f is None or name in seen:
            return None
        if f["kind"] == "sample" and _categories(f["type"]) is not None:
            return {name}
        if f["kind"] == "derive":
            refs = persona_refs(f["expr"])
            out = set()
            for ref in refs:
                sub = self.basis(persona, ref, seen + (name,))
                if sub is None:
                    return None
                out |= sub
            return out
        if f["kind"] == "write" and f.get("reuse_per"):
            out = set()
            for ref in f["reuse_per"]:
                sub = self.basis(persona, ref, seen + (name,))
                if sub is None:
                    return None
                out |= sub
            return out
        return None

    def distinct(self, persona: str | None, irs: list, agents: int) -> int | None:
        """How many different prompts these expressions can make across the agents, or None (one per agent)."""
        if any(_per_agent_dynamic(ir) for ir in irs):
            return None
        fields = set()
        for ir in irs:
            fields |= persona_refs(ir)
        # Two bounds, the smaller wins: the combinations of the sampled fields everything comes
        # from, and the combinations of the named fields' own values (a derived `"young" if age <
        # 22 else "older"` has 2 values however many ages there are).
        bounds = []
        basis: set | None = set()
        for name in fields:
            sub = self.basis(persona, name)
            if sub is None:
                basis = None
                break
            basis |= sub
        if basis is not None:
            combinations = 1
            for name in sorted(basis):
                combinations *= _categories(self.persona_fields(persona)[name]["type"])
            bounds.append(combinations)
        own = 1
        for name in fields:
            count = self.own_count(persona, name)
            if count is None:
                own = None
                break
            own *= count
        if own is not None:
            bounds.append(own)
        return min(min(bounds), agents) if bounds else None

    def own_count(self, persona: str | None, name: str) -> int | None:
        """How many values a persona field can take by itself, when that is small and known."""
        f = self.persona_fields(persona).get(name)
        if f is None:
            return None
        count = _categories(f["type"])
        if count is not None:
            return count
        if f["kind"] == "derive":
            return _leaf_count(f["expr"])
        if f["kind"] == "write" and f.get("reuse_per"):
            product = 1
            for ref in f["reuse_per"]:
                count = self.own_count(persona, ref) if ref != name else None
                if count is None:
                    return None
                product *= count
            return product
        return None

    # ---------------------------------------------------------------- cost
    def charge(self, model_name: str, calls: int, input_tokens: int, output_tokens: int) -> str:
        model = self.plan["models"][model_name]
        usage = self.usage.setdefault(model_name, _Usage())
        usage.calls += calls
        if model["provider"] == "python":  # a function: no prompt is sent, no token is counted
            return "$0 (python)"
        usage.input_tokens += calls * input_tokens
        usage.output_tokens += calls * output_tokens
        if model["provider"] == "mock":
            return "$0 (" + model["provider"] + ")"
        price = model.get("price")
        if not price or "input" not in price or "output" not in price:
            usage.cost_known = False
            return "price unknown"
        cost = calls * (input_tokens * price["input"] + output_tokens * price["output"]) / 1e6
        usage.cost += cost
        return _dollars(cost)

    def prompt_cache(self, model_name: str, calls: int, distinct: int, system_tokens: int, shared_tokens: int) -> None:
        """The provider's prompt cache on the system prompt (Anthropic: cache_control on the whole
        system prompt and on its leading part all agents share; OpenAI: its automatic prefix cache).
        Each distinct system prompt is written by its first call and read by the others; the shared
        part is written once and read by every other distinct prompt. A prefix shorter than the
        model's minimum cacheable length is not cached."""
        model = self.plan["models"][model_name]
        if model["provider"] not in ("anthropic", "openai") or not model["settings"].get("cache_prefix", True):
            return
        usage = self.usage[model_name]
        minimum = min_cacheable(model)
        writes = min(distinct, calls)
        read = write = 0
        if system_tokens >= minimum:
            read += (calls - writes) * system_tokens
            write += writes * system_tokens
        if minimum <= shared_tokens < system_tokens and writes > 1:
            read += (writes - 1) * shared_tokens
            write -= (writes - 1) * shared_tokens if system_tokens >= minimum else 0
        if not read and not write:
            usage.cache_short = max(usage.cache_short, system_tokens)
            return
        usage.cache_read += read
        usage.cache_write += write if model["provider"] == "anthropic" else 0

    def output_tokens(self, model_name: str, ty: dict) -> int:
        if ty["kind"] == "str":
            return int(self.plan["models"][model_name]["settings"].get("max_tokens", DEFAULT_MAX_TOKENS))
        if ty["kind"] == "list" and ty.get("item", {}).get("kind") == "str":
            return int(self.plan["models"][model_name]["settings"].get("max_tokens", DEFAULT_MAX_TOKENS))
        return SHORT_ANSWER_TOKENS.get(ty["kind"], 10)

    # ---------------------------------------------------------------- sections
    def header(self) -> None:
        sc = self.plan["scenario"]
        self.lines.append(f"Scenario {sc['name']} (plan {self.plan['plan_hash'][:12]}, seed {sc['seed']})")
        if sc["params"]:
            self.lines.append("  params: " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in sorted(sc["params"].items())))

    def populations(self) -> None:
        self.lines += ["", "Populations"]
        for name, pop in sorted(self.plan["populations"].items()):
            shards = math.ceil(pop["size"] / pop["max_agents_per_shard"])
            self.lines.append(f"  {name}: {pop['size']:,} agents, persona {pop['persona'] or '-'}, "
                              f"at most {pop['max_agents_per_shard']:,} agents per shard ({shards:,} shard{'s' if shards != 1 else ''} or more)")
            for kind in pop["mixture"]:
                agent = self.plan["agents"][kind["agent"]]
                model = self.plan["models"].get(agent["model"] or "", {})
                self.lines.append(f"    {kind['agent']}: {kind['count']:,} agents ({kind['share']:.0%}), "
                                  f"model {agent['model']} ({model.get('provider', '?')}), memory {agent['memory']}")
        for name, group in sorted(self.plan["groups"].items()):
            how = f"groups of {group['size']}" if "size" in group else f"one group per {group['by_field']}"
            self.lines.append(f"  group set {name}: {group['population']} in {how}")

    def environments(self) -> None:
        envs = self.plan["environments"]
        if not envs:
            return
        self.lines += ["", "Environments"]
        for name, env in sorted(envs.items()):
            kind = env["kind"]
            if kind == "python":
                kind = f"{env['extension']['kind']} (Python: {env['extension']['class']}, runs in the driver)"
            over = f" over {env['population']}" if env.get("population") else ""
            params = dict(env["params"])
            if isinstance(params.get("generator"), dict):
                gen = params.pop("generator")
                params["generator"] = f"{gen['name']}(" + ", ".join(f"{k} = {v}" for k, v in gen.items() if k != "name") + ")"
            shown = ", ".join(f"{k} = {v if isinstance(v, str) and k == 'generator' else json.dumps(v)}"
                              for k, v in params.items())
            fields = ", ".join(env["fields"])
            self.lines.append(f"  {name}: {kind}{over}" + (f"; {shown}" if shown else "") +
                              (f"; fields {fields}" if fields else ""))

    def backgrounds(self) -> None:
        writes = [(p, f) for p, persona in sorted(self.plan["personas"].items()) for f in persona["fields"] if f["kind"] == "write"]
        if not writes:
            return
        self.lines += ["", "Persona texts written before the run"]
        for persona, f in writes:
            pops = [pop for pop in self.plan["populations"].values() if pop["persona"] == persona]
            agents = sum(pop["size"] for pop in pops)
            if not agents:
                continue
            distinct = self.distinct(persona, [{"col": r, "src": "persona"} for r in f.get("reuse_per") or ()], agents) \
                if f.get("reuse_per") else None
            calls = distinct if distinct is not None else agents
            model = f["model"]
            input_tokens = _tokens(self.template_chars(f["template"], persona, None))
            output_tokens = self.output_tokens(model, {"kind": "str"})
            cost = self.charge(model, calls, input_tokens, output_tokens)
            texts = f"{distinct:,} distinct text{'s' if distinct != 1 else ''}" if distinct is not None else "one text per agent"
            self.lines.append(f"  {persona}.{f['name']} = write({model}): {agents:,} agents, {texts}, {calls:,} calls")
            self.lines.append(self.tokens_line("    ", model, input_tokens, output_tokens, calls, cost, ""))

    def steps(self, steps: list, depth: int, times: int, exact: bool) -> bool:
        """List steps; return False once a `stop` or `break` may end the run early (later counts are maxima)."""
        pad = "  " * depth
        for step in steps:
            line = step["span"]["line"]
            op = step["op"]
            if op == "repeat":
                count = step["count"].get("lit") if "lit" in step["count"] else None
                label = f"{count:,} times" if isinstance(count, int) else f"{self.text(step['count'])} times (known at run time)"
                self.lines.append(f"{pad}repeat {label}{(' as ' + step['var']) if step['var'] else ''}  [line {line}]")
                if not isinstance(count, int):
                    self.bounded = False
                exact = self.steps(step["body"], depth + 1, times * (count if isinstance(count, int) else 1), exact)
            elif op == "for":
                items = step["iterable"].get("lit") if "lit" in step["iterable"] else None
                if "list" in step["iterable"]:
                    items = step["iterable"]["list"]
                n = len(items) if isinstance(items, list) else None
                label = f"{n:,} times" if n is not None else "as many times as the list is long at run time"
                self.lines.append(f"{pad}for {step['var']} in {self.text(step['iterable'])}: {label}  [line {line}]")
                if n is None:
                    self.bounded = False
                exact = self.steps(step["body"], depth + 1, times * (n if n is not None else 1), exact)
            elif op == "if":
                for i, branch in enumerate(step["branches"]):
                    self.lines.append(f"{pad}{'if' if i == 0 else 'else if'} {self.text(branch['cond'])}  [line {line}]")
                    exact = self.steps(branch["body"], depth + 1, times, False) and exact
                if step["else"]:
                    self.lines.append(f"{pad}else")
                    exact = self.steps(step["else"], depth + 1, times, False) and exact
            elif op == "stop":
                self.lines.append(f"{pad}{'stop' if step['scope'] == 'run' else 'break'} when {self.text(step['cond'])}  [line {line}]")
                exact = False
            elif op == "ask":
                self.ask(step, pad, times, exact)
            else:
                self.lines.append(f"{pad}{self.describe(step)}  [line {line}]")
        return exact

    def describe(self, step: dict) -> str:
        op = step["op"]
        if op == "tell":
            t = step["target"]
            target = {"population": t.get("population"), "group": t.get("group"),
                      "neighbors": f"neighbors({t.get('env')})"}.get(t["kind"]) or f"{t['population']}[{self.text(t.get('index'))}]"
            sender = f" from {step['sender']}" if step["sender"] else ""
            where = f" where {self.text(step['where'])}" if step["where"] else ""
            return f"tell {target}{sender}{where} {self.text(step['message'])}"
        if op == "broadcast":
            return f"broadcast to {', '.join(step['populations'])} {self.text(step['message'])}"
        if op == "let":
            return f"let {step['name']} = {self.text(step['value'])}"
        if op == "set_var":
            return f"{step['name']} {step['operator']} {self.text(step['value'])}"
        if op == "set_env":
            return f"{step['env']}.{step['field']} {step['operator']} {self.text(step['value'])}"
        if op == "set_state":
            where = f" where {self.text(step['where'])}" if step["where"] else ""
            return f"{step['population']}.{step['field']} {step['operator']} {self.text(step['value'])}{where} (every agent)"
        if op == "record":
            return "record " + ", ".join(item["name"] for item in step["items"])
        if op == "call":
            return f"{step['env']}.{step['method']}({', '.join(self.text(a) for a in step['args'])})"
        return op

    def ask(self, step: dict, pad: str, times: int, exact: bool) -> None:
        pop = self.plan["populations"][step["population"]]
        out = step["output"]
        where = f" where {self.text(step['where'])}" if step["where"] else ""
        order = " in order" if step.get("in_order") else ""
        self.lines.append(f"{pad}ask {step['population']}{order}{where} -> {out['name']}: {describe(from_json(out['type']))}  "
                          f"[line {step['span']['line']}]")
        if step.get("in_order"):  # sequential: the time is the calls one after another, not in flight
            self.lines.append(f"{pad}  one agent after another: {pop['size']:,} calls in a row (no calls in flight "
                              "together), each agent seeing the answers before it")
        some = " (at most)" if step["where"] or not exact else ""
        for kind in pop["mixture"]:
            agent = self.plan["agents"][kind["agent"]]
            model = step["model"] or agent["model"]
            if not kind["count"] or model not in self.plan["models"]:
                continue
            irs = [step["prompt"]] + ([agent["system"]] if agent["system"] else [])
            distinct = self.distinct(pop["persona"], irs, kind["count"])
            prompt_chars = self.template_chars(step["prompt"], pop["persona"], step["population"])
            system_chars = self.template_chars(agent["system"], pop["persona"], "agent:" + kind["agent"])
            output_tokens = self.output_tokens(model, out["type"])
            # Memory fills up as the loop goes: the i-th of `times` asks carries min(i - 1, memory)
            # earlier exchanges (this ask's own prompt and answer; other asks and tells not counted).
            held = sum(min(i, agent["memory"]) for i in range(times)) / times if times else 0
            input_tokens = round(_tokens(system_chars) + _tokens(prompt_chars) * (1 + held) + output_tokens * held)
            calls = kind["count"] * times
            cost = self.charge(model, calls, input_tokens, output_tokens)
            if agent["system"]:
                systems = self.distinct(pop["persona"], [agent["system"]], kind["count"])
                shared = self.template_chars(_shared_head(agent["system"]), pop["persona"], "agent:" + kind["agent"])
                self.prompt_cache(model, calls, kind["count"] if systems is None else systems, _tokens(system_chars),
                                  _tokens(shared))
            each = f" x {times:,} times" if times != 1 else ""
            prompts = f"{distinct:,} distinct prompt{'s' if distinct != 1 else ''} per step" if distinct is not None else "one prompt per agent"
            self.lines.append(f"{pad}  {kind['agent']}: {kind['count']:,} agents{each} = {calls:,} calls{some} to {model}; {prompts}")
            self.lines.append(self.tokens_line(pad + "    ", model, input_tokens, output_tokens, calls, cost,
                                               f" (memory {agent['memory']})"))

    def tokens_line(self, pad: str, model: str, input_tokens: int, output_tokens: int, calls: int, cost: str,
                    memory: str) -> str:
        if self.plan["models"][model]["provider"] == "python":
            return f"{pad}a python function: no prompt sent, no tokens; cost {cost}"
        return (f"{pad}tokens per call ~{input_tokens:,} in{memory}, ~{output_tokens:,} out; "
                f"{calls * input_tokens:,} in, {calls * output_tokens:,} out in all; cost {cost}")

    def totals(self) -> None:
        self.lines += ["", "Totals" + ("" if self.bounded else " (for the loop counts known before the run)")]
        calls = inp = outp = 0
        cost, known = 0.0, True
        for name, usage in sorted(self.usage.items()):
            provider = self.plan["models"][name]["provider"]
            price = _dollars(usage.cost) if usage.cost_known else "price unknown"
            if provider == "python":
                self.lines.append(f"  {name} (python): {usage.calls:,} calls of a function, no tokens, {price}")
            else:
                batch = " (batch API: half the list price; replies within 24 h)" \
                    if self.plan["models"][name]["settings"].get("batch") else ""
                self.lines.append(f"  {name} ({provider}): {usage.calls:,} calls, {usage.input_tokens:,} input tokens, "
                                  f"{usage.output_tokens:,} output tokens, {price}{batch}")
            calls, inp, outp, cost = calls + usage.calls, inp + usage.input_tokens, outp + usage.output_tokens, cost + usage.cost
            known = known and usage.cost_known
        self.lines.append(f"  all models: {calls:,} calls, {inp:,} input tokens, {outp:,} output tokens, "
                          f"{_dollars(cost)}{'' if known else ' plus models of unknown price'}")
        self.cache_lines()
        self.budget_line(cost, known)

    def cache_lines(self) -> None:
        for name, usage in sorted(self.usage.items()):
            model = self.plan["models"][name]
            if model["provider"] not in ("anthropic", "openai") or not usage.input_tokens:
                continue
            if usage.cache_read or usage.cache_write:
                price = model.get("price") or {}
                full = price.get("input")
                saved = None if full is None else (usage.cache_read * (full - price.get("cache_read", full))
                                                   - usage.cache_write * (price.get("cache_write", full) - full)) / 1e6
                self.lines.append(f"  prompt cache ({name}): ~{usage.cache_read / usage.input_tokens:.0%} of input tokens "
                                  "could be cache reads (system prompts repeated within the cache's 5 minutes)"
                                  + (f", saving ~{_dollars(saved)}" if saved is not None else ""))
            elif usage.cache_short:
                self.lines.append(f"  prompt cache ({name}): none expected: the system prompts (~{usage.cache_short:,} "
                                  f"tokens) are under the {min_cacheable(model):,} tokens the provider caches for "
                                  f"{model['settings'].get('name', name)}")

    def budget_line(self, cost: float, known: bool) -> None:
        budget = self.budget
        if budget is None:
            return
        if not known:
            self.lines.append(f"  budget ${budget:,.2f}: cannot be checked, a model has no price (a run with a "
                              "budget refuses to start until every model it pays for has one)")
        elif cost <= budget:
            self.lines.append(f"  budget ${budget:,.2f}: covers the estimate ({_dollars(cost)}, {cost / budget:.0%} of the budget)"
                              + ("" if self.bounded else ", for the loop counts known before the run"))
        else:
            self.lines.append(f"  budget ${budget:,.2f}: does not cover the estimate {_dollars(cost)}; the run would stop "
                              f"after about {budget / cost:.0%} of its calls (`populace resume RUN --budget MORE` goes on)")


def _shared_head(template: dict) -> dict:
    """The leading parts of a system template that are the same for every agent: text, params,
    environment values; up to the first part that reads the agent (persona, state, self, ...)."""
    parts = template.get("template") if isinstance(template, dict) else None
    if not isinstance(parts, list):
        return {"template": []}
    head = []
    for part in parts:
        if not isinstance(part, str) and _reads_agent(part):
            break
        head.append(part)
    return {"template": head}


def _reads_agent(node) -> bool:
    if isinstance(node, dict):
        if {"col", "src", "via", "method", "self"} & set(node):
            return True
        return any(_reads_agent(v) for v in node.values())
    if isinstance(node, list):
        return any(_reads_agent(v) for v in node)
    return False


# The shortest prefix a provider caches, in tokens, by model name (Anthropic's prompt-caching
# documentation, 2026; OpenAI's automatic cache: 1,024). Longest matching name wins.
MIN_CACHEABLE = {"claude-opus-4-6": 4096, "claude-opus-4-5": 4096, "claude-haiku-4-5": 4096, "claude-sonnet-4-6": 2048,
                 "claude-sonnet-4-5": 1024, "claude-opus-4-1": 1024, "claude-opus-4": 1024, "claude-sonnet-4": 1024,
                 "claude-3-7-sonnet": 1024, "claude-3-5-haiku": 2048, "claude-3-haiku": 2048}


def min_cacheable(model: dict) -> int:
    name = str(model["settings"].get("name", ""))
    matches = [k for k in MIN_CACHEABLE if name.startswith(k)]
    return MIN_CACHEABLE[max(matches, key=len)] if matches else 1024


def _dollars(cost: float) -> str:
    if cost == 0:
        return "$0"
    return f"${cost:,.2f}" if cost >= 0.01 else f"${cost:.4f}"


def _tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def _categories(ty: dict) -> int | None:
    if ty["kind"] == "enum":
        return len(ty.get("values", ()))
    if ty["kind"] == "bool":
        return 2
    if ty["kind"] == "int" and "min" in ty and "max" in ty and ty["max"] - ty["min"] < MAX_CATEGORIES:
        return int(ty["max"] - ty["min"]) + 1
    return None


def _leaf_count(ir) -> int | None:
    """Values an expression of literal branches can take (`"a" if c else "b"`: 2), or None."""
    if "lit" in ir:
        return 1
    if "if" in ir:
        then, orelse = _leaf_count(ir["then"]), _leaf_count(ir["else"])
        return then + orelse if then is not None and orelse is not None else None
    return None


def _per_agent_dynamic(ir) -> bool:
    """Does this expression read a value that differs per agent and changes in the run (state, outputs, memory of neighbours)?"""
    if isinstance(ir, dict):
        if "col" in ir and (ir.get("src") in ("state", "output") or "via" in ir):
            return True
        if "agg" in ir and "via" in ir:
            return True
        if ir.get("call") == "random":
            return True
        # A Python kind's query may be one value per agent (its declaration is not in the plan): an
        # upper bound, like every estimate here. Of the built-in methods only degree() is.
        if "method" in ir and ir["method"] != "recent":
            return True
        return any(_per_agent_dynamic(v) for v in ir.values())
    if isinstance(ir, list):
        return any(_per_agent_dynamic(v) for v in ir)
    return False


def explain(compiled, budget: float | None = None) -> str:
    """The plan as text for people: populations, steps with calls, tokens and cost, and totals;
    whether `budget` (else the scenario's) covers the estimate."""
    plan = compiled if isinstance(compiled, dict) else compiled.plan
    ex = _Explainer(plan, budget=budget if budget is not None else plan["scenario"].get("settings", {}).get("budget"))
    ex.header()
    ex.populations()
    ex.environments()
    ex.backgrounds()
    ex.lines += ["", "Steps"]
    ex.steps(plan["workflow"], 1, 1, True)
    ex.totals()
    ex.lines += ["", f"Estimates: {CHARS_PER_TOKEN} characters a token; an interpolated text counts {TEXT_CHARS} characters "
                 f"(a written persona text: what its model writes); memory fills up over a loop; a free-text answer "
                 f"uses the model's max_tokens ({DEFAULT_MAX_TOKENS} if unset); the costs above are before prompt caching "
                 f"(its estimate is on its own line)."]
    return "\n".join(ex.lines) + "\n"
