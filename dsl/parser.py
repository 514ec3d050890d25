"""Text to Lark tree, with syntax errors turned into diagnostics.

In: a file name and its bytes or text. Out: a lark.Tree (for dsl.build) or a DiagnosticError
whose diagnostics say, in a researcher's words, what was expected where.
The grammar (populace.lark) is LALR; the post-lexer makes newlines significant outside brackets.
`parse_direct` is the fast way for text without errors: it runs Lark's own tables and lexers in one
loop and hands each rule's children straight to a builder, with no lark.Tree in between.
"""
from __future__ import annotations

import functools
import re
from dataclasses import replace
from importlib import resources

from lark import Lark, Token, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lark import PostLex
from lark.lexer import UnlessCallback
from lark.parse_tree_builder import ChildFilterLALR, maybe_create_child_filter
from lark.parsers.lalr_analysis import Shift

from .diagnostics import Diagnostic, did_you_mean
from .nodes import Span

MAX_NESTING = 200  # brackets deeper than this are a mistake, and would exhaust Python's stack later
MAX_ERRORS = 20

_OPEN = {"LPAR": "RPAR", "LSQB": "RSQB"}
_CLOSE = {"RPAR", "RSQB"}
# A line that ends in one of these goes on on the next line: a trailing comma or an operator.
# (Not `=`: `x =` at the end of a line is an unfinished item, and says so.)
CONTINUES = frozenset({"COMMA", "PLUS", "MINUS", "STAR", "SLASH", "DSLASH", "PERCENT_OP", "POW", "COMP_OP", "AND",
                       "OR", "PIPE"})

DECL_KEYWORDS = ("scenario", "import", "model", "persona", "agent", "population", "group",
                 "environment", "workflow")
STMT_KEYWORDS = ("repeat", "for", "if", "stop", "break", "ask", "tell", "broadcast", "let", "record")


class NewlinePostLexer(PostLex):
    """Drop newlines inside ( ) and [ ], collapse runs of them, join continuation lines.

    `all_newlines` drops every newline: used for `{{ expressions }}` inside templates.
    """

    always_accept = ("_NL",)

    def __init__(self, all_newlines: bool = False):
        self.all_newlines = all_newlines

    def process(self, stream):
        depth = 0
        last_was_newline = True  # a newline at the very start separates nothing
        last = None
        for tok in stream:
            if tok.type == "_NL":
                if depth == 0 and not self.all_newlines and not last_was_newline and last not in CONTINUES:
                    last_was_newline = True
                    yield tok
                continue
            last = tok.type
            if tok.type in _OPEN:
                depth += 1
                if depth > MAX_NESTING:
                    raise NestingTooDeep(tok)
            elif tok.type in _CLOSE and depth > 0:
                depth -= 1
            last_was_newline = False
            yield tok


class NestingTooDeep(Exception):
    def __init__(self, token):
        super().__init__("nesting too deep")
        self.token = token


@functools.cache
def _grammar_text() -> str:
    return resources.files(__package__).joinpath("populace.lark").read_text(encoding="utf-8")


@functools.cache
def lark_parser(start: str = "start") -> Lark:
    # cache=True: the grammar analysis is stored on disk (~0.46 s -> ~0.004 s per process).
    return Lark(
        _grammar_text(),
        parser="lalr",
        lexer="contextual",
        start=start,
        propagate_positions=True,
        maybe_placeholders=True,
        postlex=NewlinePostLexer(all_newlines=(start == "expr")),
        cache=True,
    )


# ----------------------------------------------------------------- error wording
_TOKEN_WORDS = {
    "NAME": "a name",
    "INT": "a whole number",
    "FLOAT": "a number",
    "PERCENT": "a percentage",
    "DURATION": "a duration",
    "MONEY": "an amount of dollars",
    "STRING": "a string",
    "LONG_STRING": 'a """triple-quoted""" string',
    "_NL": "the end of the line",
    "$END": "the end of the file",
    "COMP_OP": "a comparison",
    "ASSIGN_OP": "`+=`, `-=`, `*=` or `/=`",
    "TRUE": "`true`",
    "FALSE": "`false`",
    "NONE": "`none`",
}


def _words_for(term_names, parser: Lark) -> list[str]:
    patterns = {t.name: t.pattern for t in parser.terminals}
    words = set()
    for name in term_names:
        if name.startswith("a "):  # already in words (see _describe_expected)
            words.add(name)
        elif name in _TOKEN_WORDS:
            words.add(_TOKEN_WORDS[name])
        elif name in patterns and patterns[name].type == "str":
            words.add(f"`{patterns[name].value}`")
        else:
            words.add(name.lower())
    return sorted(words, key=lambda w: (not w.startswith("`"), w))


_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "DSLASH", "PERCENT_OP", "POW", "COMP_OP", "AND", "OR", "IN", "NOT",
              "DOT", "LPAR", "LSQB", "IF", "PIPE"}


def _describe_expected(expected, parser: Lark) -> str:
    expected = set(expected)
    # After a complete expression every operator may follow; say so in two words, not fifteen.
    if len(expected & _OPERATORS) >= 5:
        expected = (expected - _OPERATORS) | {"an operator"}
    # At the top level every declaration keyword may follow: one word again.
    decl_terminals = {name.upper() for name in DECL_KEYWORDS}
    if len(expected & decl_terminals) >= 5:
        expected = (expected - decl_terminals) | {"a declaration"}
    expected.discard("PIPE")  # `x | f` is a template filter: never worth proposing
    words = _words_for(expected, parser)
    # Expression starters flood the list; say it in one word.
    expression_starts = {"a name", "a whole number", "a string", "`(`", "`[`", "`-`", "`not`"}
    if len(expression_starts & set(words)) >= 5:
        words = [w for w in words if w not in expression_starts | {"a number", "a percentage", "a duration", "an amount of dollars",
                                                                    'a """triple-quoted""" string', "`true`",
                                                                    "`false`", "`none`", "`{`"}]
        words.insert(0, "an expression")
    if len(words) > 8:
        words = words[:8] + ["..."]
    if not words:  # Lark had nothing to offer (e.g. after an error it recovered from)
        return "something else"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _token_text(tok: Token) -> str:
    if tok.type == "_NL":
        return "end of line"
    if tok.type == "$END":
        return "end of file"
    text = str(tok)
    if len(text) > 30:
        text = text[:27] + "..."
    return f"`{text}`"


def _span_of_token(file: str, tok: Token) -> Span:
    line = tok.line or 1
    col = tok.column or 1
    end_line = getattr(tok, "end_line", None) or line
    end_col = getattr(tok, "end_column", None) or col + max(1, len(str(tok)))
    if tok.type == "_NL" or end_line != line:
        end_line, end_col = line, col + 1
    return Span(file=file, line=line, column=col, end_line=end_line, end_column=end_col)


def _point(file: str, line: int, col: int, width: int = 1) -> Span:
    return Span(file=file, line=line, column=col, end_line=line, end_column=col + width)


_KEYWORDS = DECL_KEYWORDS + STMT_KEYWORDS + ("param", "memory", "state", "extends", "reuse", "per", "where",
                                             "using", "from", "when", "as", "in", "else", "last", "to", "by")


def diagnose_unexpected(e: UnexpectedInput, file: str, text: str, parser: Lark, open_braces: list) -> Diagnostic:
    """Turn one Lark error into a diagnostic with words, a span and a hint; the specific cases first."""
    if isinstance(e, UnexpectedCharacters):
        return _bad_character(e, file, text)
    tok = getattr(e, "token", None)
    if isinstance(e, UnexpectedEOF) or tok is None or tok.type == "$END":
        if open_braces:
            brace = open_braces[-1]
            return Diagnostic(code="E0005", message="unexpected end of file: a `{` is never closed",
                              span=_span_of_token(file, brace), label="this `{` has no matching `}`",
                              hint="add `}` where the block ends")
        lines = text.rstrip("\n").split("\n")
        span = _point(file, len(lines), len(lines[-1]) + 1)
        expected = set(getattr(e, "expected", None) or ())
        return Diagnostic(code="E0005", message="unexpected end of file", span=span,
                          label=f"expected {_describe_expected(expected, parser)}" if expected else "",
                          hint="the last declaration or statement is incomplete")
    span = _span_of_token(file, tok)
    expected = set(e.accepts or e.expected)
    want = _describe_expected(expected, parser)
    found = _token_text(tok)
    line_text = text[text.rfind("\n", 0, tok.start_pos or 0) + 1:]
    starts_decl = _DECL_START.match(line_text) is not None
    if open_braces and starts_decl and open_braces[-1].line < tok.line:
        brace = open_braces[-1]
        return Diagnostic(code="E0017", message=f"missing `}}`: the block opened on line {brace.line} is not closed",
                          span=_span_of_token(file, brace), label="this `{` is still open",
                          hint=f"add `}}` before line {tok.line}, where a new declaration starts")
    before = text[:tok.start_pos or 0].rstrip()
    if "\n" in text[len(before):tok.start_pos or 0] and before and _ENDS_IN_OPERATOR.search(before) \
            and tok.type in ("RBRACE", "RPAR", "RSQB", "$END"):
        # `x = 1 +` at the end of a line: the operator carries the line on, and `}` cannot continue it
        line = before.count("\n") + 1
        column = len(before) - before.rfind("\n")
        return Diagnostic(code="E0004", message="unexpected end of line", span=_point(file, line, column),
                          label="expected an expression after this operator",
                          hint="a line that ends in an operator or a comma goes on on the next line; finish the expression")
    if tok.type in ("RBRACE", "RPAR", "RSQB") and tok.type not in expected:
        return Diagnostic(code="E0006", message=f"unmatched {found}", span=span, label="nothing open to close here",
                          hint=f"remove it, or close what is open first (expected {want})")
    if "ARROW" in expected and tok.type in ("_NL", "RBRACE"):
        return Diagnostic(code="E0008", message="an `ask` needs an output type", span=span,
                          label="expected `->` after the prompt",
                          hint="say what the reply is, e.g. `-> guess: int in 0..100` or `-> answer: str`")
    if tok.type == "EQUAL" and "COMP_OP" in expected:
        return Diagnostic(code="E0020", message="`=` assigns; a condition compares", span=span,
                          label="assignment inside a condition", hint="use `==` to compare")
    if tok.type == "NAME" and _at_line_start(text, tok):
        hint = did_you_mean(str(tok), _KEYWORDS)
        if hint:
            return Diagnostic(code="E0007", message=f"unknown keyword {found}", span=span,
                              label=f"expected {want}", hint=hint)
    misspelt = _misspelt_keyword_before(text, tok)
    if misspelt is not None:
        word, start = misspelt
        line_start = text.rfind("\n", 0, start) + 1
        return Diagnostic(code="E0007", message=f"unknown keyword `{word}`",
                          span=_point(file, tok.line, start - line_start + 1, len(word)),
                          label="not a keyword", hint=did_you_mean(word, _LINE_KEYWORDS))
    if tok.type in ("STRING", "LONG_STRING") and tok.type not in expected and "NAME" in expected:
        return Diagnostic(code="E0004", message=f"unexpected string {found}", span=span, label=f"expected {want}",
                          hint="names are written without quotes")
    hint = ""
    if tok.type == "_NL":
        hint = ("the line ends before this is complete; a line goes on after a comma, an operator or an open "
                "bracket, not after `=`: write the value on the same line")
    elif "_NL" in expected:
        hint = "one item per line: start a new line before this"
    return Diagnostic(code="E0004", message=f"unexpected {found}", span=span, label=f"expected {want}", hint=hint)


_ENDS_IN_OPERATOR = re.compile(r"(?:[-+*/%,|<>]|\*\*|//|==|!=|<=|>=|\band|\bor)\Z")


def _bad_character(e: UnexpectedCharacters, file: str, text: str) -> Diagnostic:
    ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
    span = _point(file, e.line, e.column)
    if ch == '"':
        # `"""` with no end lexes as an empty string `""` and then a lone `"`: point at the first quote.
        if text.startswith('"""', e.pos_in_stream) or text[max(0, e.pos_in_stream - 2):e.pos_in_stream + 1] == '"""':
            if not text.startswith('"""', e.pos_in_stream):
                span = _point(file, e.line, e.column - 2, 3)
            return Diagnostic(code="E0003", message="unclosed triple-quoted string", span=span,
                              label='this """ is never closed', hint='end the text with """ (three double quotes)')
        return Diagnostic(code="E0002", message="unclosed string", span=span,
                          label="no closing quote on this line",
                          hint='close it with `"`, or use """triple quotes""" for text over several lines')
    if ch == "'":
        return Diagnostic(code="E0001", message="strings use double quotes", span=span, label="single quote",
                          hint='write "text" instead of \'text\'')
    if ch.isprintable() and not ch.isspace():
        return Diagnostic(code="E0001", message=f"unexpected character `{ch}`", span=span,
                          label="not part of the language", hint="remove it, or put it inside a string")
    return Diagnostic(code="E0001", message=f"unexpected character {ch!r}", span=span, label="control character",
                      hint="the file may hold binary data or a stray control character")


_LINE_KEYWORDS = DECL_KEYWORDS + STMT_KEYWORDS + ("param", "memory", "state")


def _misspelt_keyword_before(text: str, tok: Token):
    """(word, offset) if the error follows a lone word that opens its line and looks like a keyword.

    `reapeat 3 {` parses `reapeat` as a name, so the error lands on `3`; the typo is the word before.
    """
    pos = tok.start_pos or 0
    line_start = text.rfind("\n", 0, pos) + 1
    m = re.fullmatch(r"[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]+", text[line_start:pos])
    if m is None or m.group(1) in _KEYWORDS or not did_you_mean(m.group(1), _LINE_KEYWORDS):
        return None
    return m.group(1), line_start + m.start(1)


def _at_line_start(text: str, tok: Token) -> bool:
    pos = tok.start_pos or 0
    line_start = text.rfind("\n", 0, pos) + 1
    return text[line_start:pos].strip() == ""


_DECL_START = re.compile(r"^(?:%s)\b" % "|".join(DECL_KEYWORDS), re.MULTILINE)


def parse_text(text: str, file: str, start: str = "start"):
    """Parse `text`; return (tree or None, diagnostics). Never raises on bad input.

    After an error the parser resumes at the next line that begins (in column 1) with a
    declaration keyword, so each broken declaration gives one error instead of a cascade.
    """
    parser = lark_parser(start)
    diagnostics: list[Diagnostic] = []
    offset_line, fragment = 0, text
    tree = None
    while True:
        tree, error = _parse_once(parser, fragment, file, start)
        if error is None:
            break
        diagnostics.append(_shift(error, offset_line))
        if start != "start" or len(diagnostics) >= MAX_ERRORS:
            break
        # Resume at the next declaration after the error line.
        error_line = error.span.line
        lines_before = fragment.split("\n", error_line)
        if len(lines_before) <= error_line:
            break
        rest = lines_before[-1]
        m = _DECL_START.search(rest)
        if m is None:
            break
        skipped = rest[: m.start()].count("\n")
        offset_line += error_line + skipped
        fragment = rest[m.start():]
    return (tree if not diagnostics else None), diagnostics


def _shift(d: Diagnostic, lines: int) -> Diagnostic:
    if not lines:
        return d
    s = d.span
    return replace(d, span=Span(file=s.file, line=s.line + lines, column=s.column,
                                end_line=s.end_line + lines, end_column=s.end_column))


def _parse_once(parser: Lark, text: str, file: str, start: str):
    try:
        return parser.parse(text), None
    except NestingTooDeep as e:
        return None, Diagnostic(code="E0013", message="brackets nested too deeply", span=_span_of_token(file, e.token),
                                label=f"more than {MAX_NESTING} levels", hint="simplify the expression")
    except UnexpectedInput as e:
        return None, diagnose_unexpected(e, file, text, parser, _braces_before(text, parser, e))
    except RecursionError:
        return None, Diagnostic(code="E0013", message="the file is nested too deeply to parse",
                                span=_point(file, 1, 1), hint="simplify the nesting")


def _braces_before(text: str, parser: Lark, e: UnexpectedInput) -> list:
    """The `{` tokens still open before the error (for 'never closed' messages)."""
    if isinstance(e, UnexpectedCharacters):
        return []
    stop = e.token.start_pos if isinstance(e, UnexpectedToken) and e.token.start_pos is not None else len(text)
    stack: list[Token] = []
    try:
        for tok in parser.lex(text):
            if tok.start_pos is not None and tok.start_pos >= stop:
                break
            if tok.type == "LBRACE":
                stack.append(tok)
            elif tok.type == "RBRACE" and stack:
                stack.pop()
    except (UnexpectedInput, NestingTooDeep):
        return stack
    return stack


# ----------------------------------------------------------------- the direct path
# Lark's parse (lexer, post-lexer, LALR loop, Tree and position wrappers per reduction) plus a
# Transformer over the Tree cost ~2 s for 10,000 lines. parse_direct runs the same tables and the
# same per-state lexers (taken from the Lark object, so the grammar stays the single source) in one
# loop, and gives each rule's children straight to the builder. It reproduces exactly what the
# Tree would have held:
# - children: Lark's own child filter (anonymous tokens and `_NL` dropped, `_rules` inlined,
#   `[optional]` parts as None), computed once per rule;
# - positions: `propagate_positions` semantics, where a rule spans from the start of its first child's
#   *container* to the end of its last one's. A container is wider than its node only for `( expr )`:
#   the parentheses belong to the container, not to the expression's own span;
# - `?rule` with one child returns the child; the long chains expr -> ... -> atom cost one table
#   lookup each and nothing else.
# It gives up (returns None) at the first error: the caller then parses again with parse_text, whose
# diagnostics are the only ones; errors are rare and worth their second parse.

_UNIT, _INLINE, _EXPAND1, _BUILD = range(4)


class _Rule:
    __slots__ = ("origin", "size", "kind", "name", "include", "trailing_nones", "kept_indices")

    def __init__(self, rule):
        self.origin = rule.origin.name
        self.size = len(rule.expansion)
        self.name = rule.alias or rule.options.template_source or rule.origin.name
        child_filter = maybe_create_child_filter(rule.expansion, rule.options.keep_all_tokens, False,
                                                 rule.options.empty_indices)
        if child_filter is None:
            self.include, self.trailing_nones = None, 0
        elif child_filter.func is ChildFilterLALR:
            self.include, self.trailing_nones = tuple(child_filter.args[0]), child_filter.args[1]
        else:  # ChildFilterLALR_NoPlaceholders
            self.include, self.trailing_nones = tuple((i, expand, 0) for i, expand in child_filter.args[0]), 0
        expand1 = rule.options.expand1 and not rule.alias
        self.kept_indices = frozenset(range(self.size)) if self.include is None else \
            frozenset(i for i, expand, nones in self.include)
        if self.origin.startswith("_"):
            self.kind = _INLINE  # the parent splices the children in (Lark's `_rule`)
        elif expand1 and self.size == 1 and self.include is None:
            self.kind = _UNIT  # `?a: b` reduced to its one child: nothing changes but the state
        elif expand1:
            self.kind = _EXPAND1
        else:
            self.kind = _BUILD

    def keeps(self, i: int) -> bool:
        """Whether the i-th symbol of the expansion is among the children."""
        return i in self.kept_indices


class _Tables:
    __slots__ = ("actions", "contextual", "lexers", "rules", "kept", "start_state", "end_state", "ignore",
                 "newline_types", "all_newlines", "unit_chains")

    def __init__(self, start: str):
        parser = lark_parser(start)
        table = parser.parser.parser.parser.parse_table
        contextual = parser.parser.lexer.lexer  # PostLexConnector -> ContextualLexer
        rule_ids: dict = {}
        self.rules: list[_Rule] = []
        # One dict per state: symbol -> target state (shift or goto, >= 0) or ~rule index (reduce, < 0).
        self.actions: list = [None] * (max(table.states) + 1)
        for state, row in table.states.items():
            encoded = {}
            for symbol, (action, arg) in row.items():
                if action is Shift:
                    encoded[symbol] = arg
                else:
                    if arg not in rule_ids:
                        rule_ids[arg] = len(self.rules)
                        self.rules.append(_Rule(arg))
                    encoded[symbol] = ~rule_ids[arg]
            self.actions[state] = encoded
        # Terminals some rule keeps as a child; the others (`{`, `=`, keywords, `_NL`) need no Token.
        self.kept = frozenset(symbol.name for rule, index in rule_ids.items() for i, symbol in enumerate(rule.expansion)
                              if symbol.is_term and self.rules[index].keeps(i))
        self.contextual = contextual
        self.lexers: list = [None] * len(self.actions)  # per state, made on first use like Lark's: see lexer()
        self.start_state = table.start_states[start]
        self.end_state = table.end_states[start]
        root = contextual.root_lexer
        self.ignore = root.ignore_types
        self.newline_types = root.newline_types
        self.all_newlines = start == "expr"  # as NewlinePostLexer(all_newlines=...) in lark_parser
        self.unit_chains: dict = {}  # (state below, top state, terminal) -> top state after the `?rule` chain

    def follow_units(self, below: int, top: int, terminal: str) -> int:
        """The state after every `?a: b` reduction that `terminal` triggers from `top` (over `below`).

        A number ends `expr -> conditional -> ... -> atom`: ten reductions that change nothing but
        the state, and depend only on these three things; parse_direct remembers the answer.
        """
        while top != self.end_state:
            action = self.actions[top].get(terminal)
            if action is None or action >= 0 or self.rules[~action].kind is not _UNIT:
                break
            top = self.actions[below][self.rules[~action].origin]
        return top

    def lexer(self, state: int) -> tuple:
        """(regexes, keywords) of the state's lexer: Lark's compiled alternations, tried in order, and
        {terminal: {word: keyword terminal}} for a word the NAME regex took that is a keyword (Lark's
        UnlessCallback)."""
        lexer = self.contextual.lexers[state]
        regexes = tuple(lexer.scanner._mres)
        assert not lexer.user_callbacks
        keywords = {}
        for terminal, unless in lexer.callback.items():
            assert isinstance(unless, UnlessCallback)
            assert all(not t.pattern.flags for t in unless.scanner.terminals)  # a dict needs exact spelling
            keywords[terminal] = {t.pattern.value: t.name for t in unless.scanner.terminals}
        self.lexers[state] = regexes, keywords
        return self.lexers[state]


@functools.cache
def _tables(start: str) -> _Tables:
    return _Tables(start)


def parse_direct(text: str, start: str, builder):
    """Parse `text` and build it in the same pass; None if the text has any syntax error.

    Each rule calls `builder.<rule name>(extent, children)`, as a lark Transformer would be called
    on the Tree; `extent` is (line, column, end_line, end_column), or None for an empty rule.
    """
    tables = _tables(start)
    actions, lexers, rules = tables.actions, tables.lexers, tables.rules
    ignore, newline_types, all_newlines = tables.ignore, tables.newline_types, tables.all_newlines
    end_state, kept = tables.end_state, tables.kept
    unit_chains, follow_units = tables.unit_chains, tables.follow_units
    states = [tables.start_state]
    values: list = []
    extents: list = []
    pos, end, line, line_start = 0, len(text), 1, 0
    depth, last_was_newline, last_kind = 0, True, None
    new_str = str.__new__
    while True:
        # ---- the next token, lexed in the current state's context (ContextualLexer + NewlinePostLexer)
        if pos < end:
            lexer = lexers[states[-1]] or tables.lexer(states[-1])
            for regex in lexer[0]:
                match = regex.match(text, pos)
                if match is not None:
                    break
            else:
                return None
            value = match.group()
            kind = match.lastgroup
            token_line, column, token_pos = line, pos - line_start + 1, pos
            if kind in newline_types:
                newlines = value.count("\n")
                if newlines:
                    line += newlines
                    line_start = pos + value.rindex("\n") + 1
            pos += len(value)
            if kind in ignore:
                continue
            if kind in lexer[1]:
                kind = lexer[1][kind].get(value, kind)
            if kind == "_NL":
                if depth or all_newlines or last_was_newline or last_kind in CONTINUES:
                    continue
                last_was_newline = True
                last_kind = kind
            else:
                last_kind = kind
                if kind in _OPEN:
                    depth += 1
                    if depth > MAX_NESTING:
                        return None
                elif kind in _CLOSE and depth:
                    depth -= 1
                last_was_newline = False
            end_column = pos - line_start + 1
            if kind in kept:
                # Token(...) without its two wrapper calls: a tenth of the parse time otherwise
                token = new_str(Token, value)
                token.type, token.value, token.start_pos, token.end_pos = kind, value, token_pos, pos
                token.line, token.column, token.end_line, token.end_column = token_line, column, line, end_column
            else:
                token = value  # filtered out by every rule: only its position counts
            at_end = False
        else:
            kind, at_end = "$END", True
        # ---- reduce as far as the token allows, then shift it
        while True:
            action = actions[states[-1]].get(kind)
            if action is None:
                return None
            if action >= 0:
                if at_end:
                    return None
                states.append(action)
                values.append(token)
                extents.append((token_line, column, line, end_column))
                break
            rule = rules[~action]
            if rule.kind is _UNIT:
                key = (states[-2], states[-1], kind)
                top = unit_chains.get(key)
                if top is None:
                    top = unit_chains[key] = follow_units(*key)
                states[-1] = top
                if at_end and top == end_state:
                    return values[-1]
                continue
            size = rule.size
            if size:
                children = values[-size:]
                child_extents = extents[-size:]
                del states[-size:], values[-size:], extents[-size:]
                first, last = child_extents[0], child_extents[-1]
                if first is None or last is None:
                    positioned = [e for e in child_extents if e is not None]
                    first, last = (positioned[0], positioned[-1]) if positioned else (None, None)
                extent = first if first is last or first is None else (first[0], first[1], last[2], last[3])
            else:
                children, extent = [], None
            if rule.include is not None:
                children = _filter(children, rule.include, rule.trailing_nones)
            if rule.kind is _INLINE:
                value = children
            elif rule.kind is _EXPAND1 and len(children) == 1:
                value = children[0]
                if value is None:
                    extent = None
                elif isinstance(value, Token):  # a token keeps its own position, as in propagate_positions
                    extent = (value.line, value.column, value.end_line, value.end_column)
            else:
                value = getattr(builder, rule.name)(extent, children)
            states.append(actions[states[-1]][rule.origin])
            values.append(value)
            extents.append(extent)
            if at_end and states[-1] == end_state:
                return value


def _filter(children: list, include: tuple, trailing_nones: int) -> list:
    """Lark's ChildFilterLALR: keep, splice (`_rule`) or pad with None, as the Tree's children would be."""
    kept: list = []
    for i, expand, nones in include:
        if nones:
            kept += [None] * nones
        if expand:
            if kept:
                kept += children[i]
            else:  # left recursion (`items: items "," item`): extend the child's own list, as Lark does
                kept = children[i]
        else:
            kept.append(children[i])
    if trailing_nones:
        kept += [None] * trailing_nones
    return kept
