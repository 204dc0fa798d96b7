"""LaTeX answer -> sympy expression, with guards against hostile input.

We do not use ``sympy.parsing.latex`` (it needs antlr, which is not a
dependency) nor hand model output to ``sympify``: sympy's string parser
ends in ``eval``, and model output is untrusted.  Instead a small
tokenizer/translator turns the LaTeX subset that appears in final
answers (numbers, single-letter variables with subscripts, Greek
letters, ``\\frac``, ``\\sqrt[n]{}``, ``^``, ``\\binom``, ``|x|``,
``\\log_b``, trig/log functions, ``\\pi``, ``\\infty``, ``!``) into
Python-syntax text in which *every identifier was written by us*:
single letters become pre-made Symbols, functions come from a fixed
whitelist, and the evaluation namespace has no builtins.  Anything
outside the subset raises :class:`Unsupported` and the judge falls back
to string comparison.

Before evaluating, the generated code's AST is walked to bound the size
of numbers it would produce (``9^{9^{9^9}}``), the size of symbolic
powers (``(x+1)^{10^6}``), factorial arguments and nesting depth;
violations raise :class:`Refused`.  These checks are heuristics that
catch the common blow-ups cheaply; the hard guarantee against hangs is
the per-item timeout of :class:`~sophia_jax.verify.pool.VerifierPool`.
"""

from __future__ import annotations

import ast
import math
import re
from functools import lru_cache

import sympy
from sympy.parsing.sympy_parser import (
    auto_number,
    auto_symbol,
    eval_expr,
    implicit_multiplication,
    stringify_expr,
)

__all__ = [
    "MAX_LOG10",
    "MAX_SYMBOLIC_POWER",
    "MAX_SYMPY_CHARS",
    "Refused",
    "Unsupported",
    "latex_to_code",
    "to_sympy",
]

#: Answers longer than this are not parsed symbolically at all.
MAX_SYMPY_CHARS = 400
#: Maximum bracket/brace nesting depth accepted by the translator.
MAX_DEPTH = 40
#: Refuse constant expressions whose magnitude may exceed 10**MAX_LOG10.
#: 10**10000 is far beyond any legitimate answer (2^2023 has 610 digits)
#: and still cheap for Python integers.
MAX_LOG10 = 10_000.0
#: Refuse powers of symbolic bases with an exponent above this; sympy
#: may try to expand them.
MAX_SYMBOLIC_POWER = 1000
#: Largest factorial argument evaluated exactly.
MAX_FACTORIAL = 10_000


class Unsupported(ValueError):
    """The answer uses LaTeX outside the subset we translate."""


class Refused(ValueError):
    """The answer is (probably) too expensive to evaluate symbolically."""


_TOKEN_RE = re.compile(
    r"(?P<num>\d+(?:\.\d+)?|\.\d+)"
    r"|(?P<cmd>\\[A-Za-z]+|\\[{}|])"
    r"|(?P<letter>[A-Za-z])"
    r"|(?P<op>\*\*|[-+*/^_(){}\[\]|!,=<>'.:])"
    r"|(?P<ws>\s+)"
)

_FUNCS = {
    "sin": "sin", "cos": "cos", "tan": "tan", "cot": "cot", "sec": "sec",
    "csc": "csc", "arcsin": "asin", "arccos": "acos", "arctan": "atan",
    "sinh": "sinh", "cosh": "cosh", "tanh": "tanh", "ln": "log", "log": "log",
    "exp": "exp", "lg": "log10",
}
_GREEK = (
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota "
    "kappa lambda mu nu xi rho sigma tau upsilon phi varphi chi psi omega "
    "Gamma Delta Theta Lambda Xi Sigma Upsilon Phi Psi Omega"
).split()

# The only names that generated code may reference besides our symbols.
_GLOBALS: dict = {"__builtins__": {}}
for _name in (
    "Integer", "Float", "Rational", "Symbol", "sqrt", "root", "log", "exp",
    "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "sinh",
    "cosh", "tanh", "Abs", "binomial", "factorial", "floor", "ceiling", "pi",
    "E", "I", "oo",
):
    _GLOBALS[_name] = getattr(sympy, _name)
_GLOBALS["log10"] = lambda x: sympy.log(x, 10)

_TRANSFORMS = (auto_symbol, auto_number, implicit_multiplication)


def _tokenize(s: str) -> list[tuple[str, str]]:
    toks = []
    pos = 0
    while pos < len(s):
        m = _TOKEN_RE.match(s, pos)
        if m is None:
            raise Unsupported(f"unexpected character {s[pos]!r}")
        kind = m.lastgroup
        if kind != "ws":
            toks.append((kind, m.group(0)))
        pos = m.end()
    return toks


class _Translator:
    """Recursive-descent translation of a token list into Python code."""

    def __init__(self, toks: list[tuple[str, str]]):
        self.toks = toks
        self.i = 0
        self.symbols: dict[str, sympy.Symbol] = {}

    # -- helpers ----------------------------------------------------------
    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise Unsupported("unexpected end of expression")
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        tok = self.take()
        if tok[1] != value:
            raise Unsupported(f"expected {value!r}, got {tok[1]!r}")

    def symbol(self, label: str) -> str:
        """Name of a generated variable bound to ``Symbol(label)``."""
        for name, sym in self.symbols.items():
            if sym.name == label:
                return name
        name = f"V{len(self.symbols)}"
        self.symbols[name] = sympy.Symbol(label)
        return name

    # -- grammar ----------------------------------------------------------
    def sequence(self, closer: str | None) -> str:
        out: list[str] = []
        while True:
            tok = self.peek()
            if tok is None:
                if closer is not None:
                    raise Unsupported(f"missing {closer!r}")
                break
            if closer is not None and tok[1] == closer:
                self.i += 1
                break
            if tok[1] == "!":
                # Postfix factorial applies to the previous atom.
                self.i += 1
                if not out or out[-1] in ("+", "-", "*", "/") or out[-1].startswith("**"):
                    raise Unsupported("dangling '!'")
                out[-1] = f"factorial({out[-1]})"
                continue
            out.append(self.atom())
        return " ".join(out)

    def group(self) -> str:
        """One argument: ``{...}`` or a single token (LaTeX semantics)."""
        tok = self.take()
        kind, val = tok
        if val == "{":
            return "(" + self.sequence("}") + ")"
        if kind == "num":
            if len(val) > 1:  # \frac12 / x^23: only the first digit binds
                self.toks[self.i:self.i] = [("num", val[1:])]
                val = val[0]
            return val
        if kind == "letter":
            return self.letter(val)
        if kind == "cmd":
            self.i -= 1
            return self.atom()
        if val == "-":  # x^-1
            return "(-" + self.group() + ")"
        raise Unsupported(f"bad argument {val!r}")

    def letter(self, ch: str) -> str:
        sub = ""
        tok = self.peek()
        if tok is not None and tok[1] == "_":
            self.i += 1
            sub = self.raw_group()
        if not sub:
            if ch == "e":
                return "E"
            if ch == "i":
                return "I"
        return self.symbol(f"{ch}_{{{sub}}}" if sub else ch)

    def raw_group(self) -> str:
        """Subscript text, kept verbatim as part of a symbol name."""
        tok = self.take()
        if tok[1] != "{":
            return tok[1]
        parts = []
        depth = 1
        while True:
            t = self.take()
            if t[1] == "{":
                depth += 1
            elif t[1] == "}":
                depth -= 1
                if depth == 0:
                    return "".join(parts)
            parts.append(t[1])

    def func_arg(self) -> str:
        tok = self.peek()
        if tok is None:
            raise Unsupported("function without argument")
        if tok[1] == "(":
            self.i += 1
            return "(" + self.sequence(")") + ")"
        if tok[1] in ("^", "_"):
            raise Unsupported("powers of functions")
        return self.group()

    def atom(self) -> str:
        kind, val = self.take()
        if kind == "num":
            return val
        if kind == "letter":
            return self.letter(val)
        if kind == "op":
            if val in ("+", "-", "*", "/"):
                return val
            if val in ("^", "**"):
                return "** " + self.group()
            if val == "(":
                return "(" + self.sequence(")") + ")"
            if val == "[":
                return "(" + self.sequence("]") + ")"
            if val == "{":
                return "(" + self.sequence("}") + ")"
            if val == "|":
                return "Abs(" + self.sequence("|") + ")"
            raise Unsupported(f"operator {val!r}")
        name = val[1:]
        if name == "frac":
            num = self.group()
            den = self.group()
            return f"(({num})/({den}))"
        if name == "sqrt":
            tok = self.peek()
            if tok is not None and tok[1] == "[":
                self.i += 1
                n = self.sequence("]")
                return f"root({self.group()}, ({n}))"
            return f"sqrt({self.group()})"
        if name == "binom":
            a = self.group()
            b = self.group()
            return f"binomial({a}, {b})"
        if name == "log":
            tok = self.peek()
            if tok is not None and tok[1] == "_":
                self.i += 1
                base = self.group()
                return f"log({self.func_arg()}, {base})"
        if name in _FUNCS:
            return f"{_FUNCS[name]}({self.func_arg()})"
        if name == "pi":
            return "pi"
        if name == "infty":
            return "oo"
        if name in ("cdot", "times", "ast"):
            return "*"
        if name == "div":
            return "/"
        if name in _GREEK:
            sub = ""
            tok = self.peek()
            if tok is not None and tok[1] == "_":
                self.i += 1
                sub = self.raw_group()
            return self.symbol(f"{name}_{{{sub}}}" if sub else name)
        if name == "lfloor":
            return "floor(" + self.sequence(r"\rfloor") + ")"
        if name == "lceil":
            return "ceiling(" + self.sequence(r"\rceil") + ")"
        if name in ("left", "right"):
            return ""
        raise Unsupported(f"command \\{name}")


def _check_depth(s: str) -> None:
    depth = best = 0
    for c in s:
        if c in "([{":
            depth += 1
            best = max(best, depth)
        elif c in ")]}":
            depth -= 1
    if best > MAX_DEPTH:
        raise Refused(f"nesting too deep ({best} levels)")


def latex_to_code(latex: str) -> tuple[str, dict[str, sympy.Symbol]]:
    """Translate LaTeX to Python-syntax code plus the symbols it uses."""
    if len(latex) > MAX_SYMPY_CHARS:
        raise Refused(f"expression too long for symbolic evaluation ({len(latex)} chars)")
    _check_depth(latex)
    tr = _Translator(_tokenize(latex))
    code = tr.sequence(None).strip()
    if not code:
        raise Unsupported("empty expression")
    return code, tr.symbols


# -- magnitude guard -----------------------------------------------------

_CONST_NAMES = {"pi": 0.5, "E": 0.5, "I": 0.0, "oo": 0.0}
_LOG10_2 = math.log10(2)


def _bound(node: ast.AST, symbols: dict, depth: int = 0) -> tuple[bool, float]:
    """(is_constant, upper bound on log10 of the magnitude) for an AST node.

    The bound is crude (it ignores cancellation and treats division like
    multiplication) but errs towards refusing, which only costs a
    fallback to string comparison.
    """
    if depth > 3 * MAX_DEPTH:
        raise Refused("expression too deeply nested")
    d = depth + 1
    if isinstance(node, ast.Expression):
        return _bound(node.body, symbols, d)
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, int):
            v = abs(v)
            if v < 10**15:
                return True, math.log10(v) if v > 1 else 0.0
            return True, float(len(str(v)))  # digit count bounds log10 from above
        if isinstance(v, (float, str)):
            try:
                f = abs(float(v))
            except ValueError:
                raise Unsupported("bad number literal") from None
            return True, math.log10(f) if f > 1 else 0.0
        raise Unsupported("unexpected literal")
    if isinstance(node, ast.Name):
        if node.id in symbols:
            return False, 1.0
        if node.id in _CONST_NAMES:
            return True, _CONST_NAMES[node.id]
        raise Unsupported(f"unexpected name {node.id}")
    if isinstance(node, ast.UnaryOp):
        return _bound(node.operand, symbols, d)
    if isinstance(node, ast.BinOp):
        cl, ml = _bound(node.left, symbols, d)
        cr, mr = _bound(node.right, symbols, d)
        if isinstance(node.op, (ast.Add, ast.Sub)):
            return cl and cr, max(ml, mr) + _LOG10_2
        if isinstance(node.op, (ast.Mult, ast.Div)):
            return cl and cr, ml + mr
        if isinstance(node.op, ast.Pow):
            return _pow_bound(cl, ml, cr, mr)
        raise Unsupported("unexpected operator")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        fname = node.func.id
        if fname in ("Integer", "Float", "Symbol", "Rational"):
            if fname == "Symbol":
                return False, 1.0
            consts = [_bound(a, symbols, d) for a in node.args]
            return True, max((m for _, m in consts), default=0.0)
        if node.keywords or not node.args:
            raise Unsupported(f"bad call to {fname}")
        args = [_bound(a, symbols, d) for a in node.args]
        const = all(c for c, _ in args)
        mags = [m for _, m in args]
        if fname == "factorial":
            c, m = args[0]
            if c and m > math.log10(MAX_FACTORIAL):
                raise Refused(f"factorial argument too large (~10^{m:.0f})")
            n = 10 ** min(m, 6)
            return c, n * max(math.log10(n), 1.0)
        if fname == "exp":
            return _pow_bound(True, 0.5, *args[0])
        if fname == "binomial":
            c, m = args[0]
            if c and m > math.log10(MAX_LOG10 / _LOG10_2):
                raise Refused("binomial argument too large")
            return const, 10 ** min(m, 6) * _LOG10_2
        return const, max(mags, default=0.0)
    raise Unsupported(f"unexpected syntax {type(node).__name__}")


def _pow_bound(cb: bool, mb: float, ce: bool, me: float) -> tuple[bool, float]:
    if me > 12:
        raise Refused(f"exponent too large (~10^{me:.0f})")
    e = 10.0 ** me
    if not ce:
        # Symbolic exponent: magnitude is unknowable; the value cannot be
        # expanded into a huge integer either, so let it through.
        return False, mb + 1.0
    if not cb:
        if e > MAX_SYMBOLIC_POWER:
            raise Refused(f"power of a symbolic expression too large (~{e:.0e})")
        return False, e * max(mb, 1.0)
    # At least log10(2) for the base: (1/2)^(10^9) is just as big a number.
    mag = e * max(mb, _LOG10_2)
    if mag > MAX_LOG10:
        raise Refused(f"number too large (~10^{mag:.3g})")
    return True, mag


@lru_cache(maxsize=4096)
def to_sympy(latex: str) -> sympy.Expr:
    """Parse a normalised LaTeX expression into sympy (cached per string).

    Raises :class:`Unsupported` for syntax outside the supported subset
    and :class:`Refused` for inputs that look too expensive.
    """
    code, symbols = latex_to_code(latex)
    local = dict(symbols)
    py = stringify_expr(code, local, _GLOBALS, _TRANSFORMS)
    try:
        tree = ast.parse(py, mode="eval")
    except (SyntaxError, RecursionError, MemoryError) as e:
        raise Unsupported(f"unparsable expression ({type(e).__name__})") from None
    _bound(tree, symbols)
    try:
        expr = eval_expr(py, local, _GLOBALS)
    except (TypeError, ValueError, ZeroDivisionError, AttributeError, SyntaxError) as e:
        raise Unsupported(f"sympy rejected expression: {e}") from None
    if not isinstance(expr, sympy.Basic):
        expr = sympy.sympify(expr) if isinstance(expr, (int, float)) else None
        if expr is None:
            raise Unsupported("not an expression")
    return expr
