"""LaTeX answer -> sympy expression, with guards against hostile input.

Model output is untrusted, and sympy's string parser (``sympify``,
``parse_expr``) ends in ``eval``, so no model text ever reaches it.  Our
own small tokenizer/translator turns the LaTeX subset that appears in
final answers (numbers, letters with subscripts and primes, Greek letters,
``\\frac``, ``\\sqrt[n]{}``, ``^``, ``\\binom``, ``|x|``, ``\\log_b``,
trig/log functions and their powers, ``\\pi``, ``\\infty``, ``!``, degrees)
into Python-syntax text in which *every identifier was written by us*:
letters become pre-made Symbols, functions come from a fixed whitelist,
and the evaluation namespace has no builtins.  Anything outside the subset
raises :class:`Unsupported`; the judge then asks :func:`math_verify_equal`,
which runs Hugging Face math-verify's LaTeX parser (an ANTLR grammar turned
into sympy objects, no ``eval``) and its comparison.  Only that LaTeX path
is used.  Where math-verify reaches ``parse_expr`` (checked against 0.9):
``parse()`` with its default targets includes ``ExprExtractionConfig``, whose
``extract_expr`` hands regex-matched plain expressions to
``sympy.parse_expr`` (we never pass that target); its LaTeX converter calls
``parse_expr`` on ``variable_values`` (we pass none) and, through
``sympy.Number(text)``, on NUMBER tokens, which hold only digits, commas and
points.  ``tests/test_verify_untrusted.py`` spies on ``parse_expr`` to keep it so.

Both engines first pass :func:`check_cost`, a string-level guard against
inputs that would make sympy build astronomically large numbers
(``9^{9^{9^9}}``, ``(x+1)^{10^6}``, ``(10^9)!``); it raises
:class:`Refused`.  The hard guarantee against hangs stays the per-item
timeout of :class:`~sophia_jax.verify.pool.VerifierPool`.
"""

from __future__ import annotations

import ast
import logging
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
    "MAX_SYMPY_CHARS",
    "Refused",
    "Unsupported",
    "check_cost",
    "latex_to_code",
    "math_verify_equal",
    "to_sympy",
]

#: Answers longer than this are not parsed symbolically at all.
MAX_SYMPY_CHARS = 400
#: Maximum bracket/brace nesting depth accepted.
MAX_DEPTH = 40
#: Largest exponent allowed on a number, and on anything symbolic (sympy may expand it).
MAX_NUMERIC_POWER = 100_000
MAX_SYMBOLIC_POWER = 1000
#: Largest factorial (or binomial) argument evaluated.
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
    def peek(self, ahead: int = 0) -> tuple[str, str] | None:
        j = self.i + ahead
        return self.toks[j] if j < len(self.toks) else None

    def next_is(self, value: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[1] == value

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise Unsupported("unexpected end of expression")
        self.i += 1
        return tok

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
        kind, val = self.take()
        if val == "{":
            return "(" + self.sequence("}") + ")"
        if kind == "num":
            if len(val) > 1:  # \frac12 / x^23: only the first digit binds
                self.toks[self.i:self.i] = [("num", val[1:])]
                val = val[0]
            return val
        if kind == "letter":
            return self.name(val)
        if kind == "cmd":
            self.i -= 1
            return self.atom()
        if val == "-":  # x^-1
            return "(-" + self.group() + ")"
        raise Unsupported(f"bad argument {val!r}")

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

    def is_prime(self) -> bool:
        """At ``'`` or ``^{\\prime}`` / ``^\\prime``."""
        if self.next_is("'"):
            return True
        if not self.next_is("^"):
            return False
        nxt = self.peek(1)
        return nxt is not None and (nxt[1] == r"\prime" or (nxt[1] == "{" and (self.peek(2) or ("", ""))[1] == r"\prime"))

    def name(self, base: str) -> str:
        """A letter or Greek name with its subscript and primes: ``v_0``, ``\\omega_L'``.

        A power written before the subscript (``v^2_0``) still binds to the
        subscripted name.
        """
        power = None
        if self.next_is("^") and not self.is_prime():
            save = self.i
            self.i += 1
            power = self.group()
            if not self.next_is("_"):
                self.i, power = save, None
        sub = ""
        if self.next_is("_"):
            self.i += 1
            sub = self.raw_group()
        primes = ""
        while self.is_prime():
            if self.take()[1] == "^":
                if self.take()[1] == "{":
                    self.take()
                    self.take()
            primes += "'"
        if not sub and not primes and base in ("e", "i"):
            code = "E" if base == "e" else "I"
        else:
            code = self.symbol(base + (f"_{{{sub}}}" if sub else "") + primes)
        return f"{code} ** {power}" if power is not None else code

    def func_arg(self) -> str:
        """``(...)``, ``{...}``, or (LaTeX usage) the product that follows: ``\\sin 2x``, ``\\cos x^2``."""
        tok = self.peek()
        if tok is None:
            raise Unsupported("function without argument")
        if tok[1] in ("(", "{"):
            self.i += 1
            return "(" + self.sequence(")" if tok[1] == "(" else "}") + ")"
        out = []
        while (tok := self.peek()) is not None and (
            tok[0] in ("num", "letter") or tok[1][1:] in _GREEK or (out and tok[1] == "^")
        ):
            out.append(self.atom())
        if not out:
            return self.group()
        return "(" + " ".join(out) + ")"

    def function(self, name: str) -> str:
        """``\\sin x``, ``\\tan^2(y)``, ``\\sin^{-1} x`` (the inverse), ``\\log_2 8``."""
        power = None
        if self.next_is("^"):
            self.i += 1
            power = self.group()
        if name == "log" and self.next_is("_"):
            self.i += 1
            base = self.group()
            call = f"log({self.func_arg()}, {base})"
        elif power is not None and power.replace(" ", "") == "(-1)" and name in ("sin", "cos", "tan"):
            return f"a{_FUNCS[name]}({self.func_arg()})"
        else:
            call = f"{_FUNCS[name]}({self.func_arg()})"
        return f"({call}) ** {power}" if power is not None else call

    def atom(self) -> str:
        kind, val = self.take()
        if kind == "num":
            return val
        if kind == "letter":
            return self.name(val)
        if kind == "op":
            if val in ("+", "-", "*", "/"):
                return val
            if val in ("^", "**"):
                # 90^{\circ} inside an expression (\sin(90^\circ - x)): degrees to radians.
                if self.next_is(r"\circ"):
                    self.i += 1
                    return "* (pi / 180)"
                if self.next_is("{") and [t[1] for t in self.toks[self.i + 1:self.i + 3]] == [r"\circ", "}"]:
                    self.i += 3
                    return "* (pi / 180)"
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
            if self.next_is("["):
                self.i += 1
                n = self.sequence("]")
                return f"root({self.group()}, ({n}))"
            return f"sqrt({self.group()})"
        if name == "binom":
            a = self.group()
            b = self.group()
            return f"binomial({a}, {b})"
        if name in _FUNCS:
            return self.function(name)
        if name == "pi":
            return "pi"
        if name == "infty":
            return "oo"
        if name in ("cdot", "times", "ast"):
            return "*"
        if name == "div":
            return "/"
        if name in _GREEK:
            return self.name(name)
        if name == "lfloor":
            return "floor(" + self.sequence(r"\rfloor") + ")"
        if name == "lceil":
            return "ceiling(" + self.sequence(r"\rceil") + ")"
        raise Unsupported(f"command \\{name}")


_POWER_RE = re.compile(r"\^\s*(\{)?\s*\(?\s*([-+]?\d+(?:\.\d+)?)")
_FACTORIAL_ARG_RE = re.compile(r"(\d+)\s*!")
_BINOM_ARG_RE = re.compile(r"\\binom\s*\{?\s*(\d+)")


def _group_end(s: str, i: int) -> int:
    """End of the LaTeX argument starting at ``s[i]`` (a braced group or one token)."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i < len(s) and s[i] == "{":
        depth = 0
        for j in range(i, len(s)):
            depth += {"{": 1, "}": -1}.get(s[j], 0)
            if depth == 0:
                return j + 1
        return len(s)
    return i + 1


def check_cost(latex: str) -> None:
    """Raise :class:`Refused` for answers whose value sympy could not afford to build.

    Rough string rules, cheap on any input: length and nesting; a power of a
    power of numbers (``9^{9^9}``, ``10^{10^{10}}``); an exponent above
    :data:`MAX_NUMERIC_POWER`, or above :data:`MAX_SYMBOLIC_POWER` on anything
    but a number; factorials and binomials of more than :data:`MAX_FACTORIAL`,
    or of a power.
    """
    if len(latex) > MAX_SYMPY_CHARS:
        raise Refused(f"expression too long for symbolic evaluation ({len(latex)} chars)")
    depth = best = 0
    for c in latex:
        depth += (c in "([{") - (c in ")]}")
        best = max(best, depth)
    if best > MAX_DEPTH:
        raise Refused(f"nesting too deep ({best} levels)")
    for m in re.finditer(r"\^", latex):
        end = _group_end(latex, m.end())
        exponent, after = latex[m.end():end], latex[end:].lstrip()
        if after.startswith("^") or ("^" in exponent and not re.search(r"[A-Za-z]", exponent.replace("frac", ""))):
            raise Refused("power of a power of numbers")
        value = _POWER_RE.match(latex, m.start())
        if value:
            e = abs(float(value.group(2)))
            numeric_base = m.start() > 0 and latex[m.start() - 1].isdigit()
            if e > MAX_NUMERIC_POWER or (e > MAX_SYMBOLIC_POWER and not numeric_base):
                raise Refused(f"exponent too large ({value.group(2)})")
    for pat in (_FACTORIAL_ARG_RE, _BINOM_ARG_RE):
        for m in pat.finditer(latex):
            if int(m.group(1)) > MAX_FACTORIAL:
                raise Refused(f"factorial or binomial argument too large ({m.group(1)})")
    for m in re.finditer(r"[)}]\s*!", latex):
        if "^" in latex[max(0, m.start() - 60):m.start()]:
            raise Refused("factorial of a power")


def latex_to_code(latex: str) -> tuple[str, dict[str, sympy.Symbol]]:
    """Translate LaTeX to Python-syntax code plus the symbols it uses."""
    check_cost(latex)
    tr = _Translator(_tokenize(latex))
    code = tr.sequence(None).strip()
    if not code:
        raise Unsupported("empty expression")
    return code, tr.symbols


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
        ast.parse(py, mode="eval")
    except (SyntaxError, RecursionError, MemoryError) as e:
        raise Unsupported(f"unparsable expression ({type(e).__name__})") from None
    try:
        expr = eval_expr(py, local, _GLOBALS)
    except (TypeError, ValueError, ZeroDivisionError, AttributeError, SyntaxError) as e:
        raise Unsupported(f"sympy rejected expression: {e}") from None
    if not isinstance(expr, sympy.Basic):
        expr = sympy.sympify(expr) if isinstance(expr, (int, float)) else None
        if expr is None:
            raise Unsupported("not an expression")
    return expr


def math_verify_equal(gold: str, pred: str) -> bool:
    """math-verify's verdict on two LaTeX answers (its LaTeX parser only; see the module doc).

    Its own signal-based timeouts are off: they would fight the pool's, which
    kill the whole worker instead.  Its set-vs-relation comparison stays off
    (our intervals already read inequalities; that option would turn constant
    relations into sets, so ``5 \\neq 120`` would equal ``\\emptyset``).
    """
    from math_verify import LatexExtractionConfig, parse, verify

    check_cost(gold)
    check_cost(pred)
    config = [LatexExtractionConfig()]
    g = parse(f"$${gold}$$", config, parsing_timeout=None)
    p = parse(f"$${pred}$$", config, parsing_timeout=None)
    return bool(g and p and verify(g, p, timeout_seconds=None))


# math-verify warns once per process that its timeouts are off; they are, on purpose.
for _logger in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_logger).setLevel(logging.ERROR)
