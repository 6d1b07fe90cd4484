"""A parser for the FHIRPath subset SearchParameter expressions use (http://hl7.org/fhirpath/N1/).

Produces a small tuple AST for ``fhirpath_compiler``:

    ("id", name)                   identifier at the start of a path (type name or element)
    ("this",)                      $this
    ("lit", value)                 string, number (Decimal) or boolean literal
    ("member", base, name)         base.name
    ("call", base | None, name, [args])
    ("index", base, index_ast)     base[index]
    ("op", op, left, right)        | = != and or xor implies < > <= >= ~ !~ in contains + - & * /
    ("is", expr, type_name) / ("as", expr, type_name)

Anything outside the grammar raises ``FhirPathSyntaxError``.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

Ast = tuple[Any, ...]


class FhirPathSyntaxError(ValueError):
    pass


_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<delim>`(?:[^`\\]|\\.)*`)
  | (?P<var>\$this|\$index|\$total|%[A-Za-z_][A-Za-z0-9_]*|%`(?:[^`\\]|\\.)*`|%'(?:[^'\\]|\\.)*')
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|!=|!~|[.()\[\],|=<>~+\-&*/])
    """,
    re.VERBOSE | re.DOTALL,
)

# binding powers, FHIRPath precedence from loosest to tightest
_INFIX_BP: dict[str, int] = {
    "implies": 1,
    "or": 2,
    "xor": 2,
    "and": 3,
    "in": 4,
    "contains": 4,
    "=": 5,
    "~": 5,
    "!=": 5,
    "!~": 5,
    "<": 6,
    ">": 6,
    "<=": 6,
    ">=": 6,
    "|": 7,
    "is": 8,
    "as": 8,
    "+": 9,
    "-": 9,
    "&": 9,
    "*": 10,
    "/": 10,
    "div": 10,
    "mod": 10,
}
_POSTFIX_BP = 20
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unescape(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "u" and i + 5 < len(body):
                out.append(chr(int(body[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m:
            raise FhirPathSyntaxError(f"unexpected character at {pos} in {text!r}")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        if kind in ("ws", "comment"):
            continue
        tokens.append((kind, m.group()))
    tokens.append(("eof", ""))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos]

    def next(self) -> tuple[str, str]:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def expect(self, value: str) -> None:
        _, val = self.next()
        if val != value:
            raise FhirPathSyntaxError(f"expected {value!r}, got {val!r} in {self.text!r}")

    def parse(self) -> Ast:
        ast = self.expr(0)
        if self.peek()[0] != "eof":
            raise FhirPathSyntaxError(f"unexpected {self.peek()[1]!r} in {self.text!r}")
        return ast

    def expr(self, min_bp: int) -> Ast:
        left = self.postfix(self.term())
        while True:
            kind, val = self.peek()
            if kind not in ("op", "ident") or val not in _INFIX_BP:
                return left
            bp = _INFIX_BP[val]
            if bp <= min_bp:
                return left
            self.next()
            if val in ("is", "as"):
                left = (val, left, self.type_specifier())
            else:
                left = ("op", val, left, self.expr(bp))

    def type_specifier(self) -> str:
        parts = [self.identifier()]
        while self.peek()[1] == ".":
            self.next()
            parts.append(self.identifier())
        name = ".".join(parts)
        return name.removeprefix("FHIR.")

    def identifier(self) -> str:
        kind, val = self.next()
        if kind == "ident":
            return val
        if kind == "delim":
            return _unescape(val[1:-1])
        raise FhirPathSyntaxError(f"expected an identifier, got {val!r} in {self.text!r}")

    def term(self) -> Ast:
        kind, val = self.peek()
        if kind == "op" and val == "(":
            self.next()
            inner = self.expr(0)
            self.expect(")")
            return inner
        if kind == "op" and val in ("-", "+"):
            self.next()
            operand = self.postfix(self.term())
            return ("op", "-", ("lit", Decimal(0)), operand) if val == "-" else operand
        if kind == "string":
            self.next()
            return ("lit", _unescape(val[1:-1]))
        if kind == "number":
            self.next()
            return ("lit", Decimal(val) if "." in val else int(val))
        if kind == "var":
            self.next()
            if val == "$this":
                return ("this",)
            name = val[1:]
            if name[:1] in "`'":
                name = _unescape(name[1:-1])
            return ("var", name)
        if kind in ("ident", "delim"):
            name = self.identifier()
            if kind == "ident" and name in ("true", "false"):
                return ("lit", name == "true")
            if self.peek()[1] == "(":
                return ("call", None, name, self.arguments())
            return ("id", name)
        raise FhirPathSyntaxError(f"unexpected {val!r} in {self.text!r}")

    def arguments(self) -> list[Ast]:
        self.expect("(")
        args: list[Ast] = []
        if self.peek()[1] == ")":
            self.next()
            return args
        while True:
            args.append(self.expr(0))
            _, val = self.next()
            if val == ")":
                return args
            if val != ",":
                raise FhirPathSyntaxError(f"expected ',' or ')', got {val!r} in {self.text!r}")

    def postfix(self, left: Ast) -> Ast:
        while True:
            val = self.peek()[1]
            if val == ".":
                self.next()
                name = self.identifier()
                if self.peek()[1] == "(":
                    left = ("call", left, name, self.arguments())
                else:
                    left = ("member", left, name)
            elif val == "[":
                self.next()
                idx = self.expr(0)
                self.expect("]")
                left = ("index", left, idx)
            else:
                return left


def parse(text: str) -> Ast:
    return _Parser(text).parse()


def split_union(ast: Ast) -> list[Ast]:
    """The top-level branches of a ``a | b | c`` expression."""
    if ast[0] == "op" and ast[1] == "|":
        return split_union(ast[2]) + split_union(ast[3])
    return [ast]
