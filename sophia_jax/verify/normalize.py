"""Normalisation of LaTeX-ish final answers before they are compared.

Two levels:

* :func:`clean_latex` works on a whole answer: it drops presentation-only
  LaTeX (math delimiters, ``\\left``/``\\right``, spacing, ``\\text{}``
  wrappers, ``\\dfrac``...) and maps unicode math symbols to LaTeX, so
  that later stages see one spelling per concept.
* :func:`normalize_part` works on one comma-separated part of an answer:
  it peels off things that decorate a value without changing it (units,
  a percent sign, a degree sign) and records the percent/degree marks as
  flags, because the judge needs them to accept ``50%`` == ``0.5``.

Everything here is plain string work (no sympy) and uses regexes that
run in linear time, so it is safe on arbitrarily long model output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "CODE_RE",
    "NAME_RE",
    "Part",
    "canonical",
    "clean_latex",
    "fix_thousands",
    "match_brace",
    "normalize_part",
    "split_equation",
    "split_top_level",
    "strip_approximation",
    "strip_assignment",
]

#: Code, not mathematics.  The judge refuses a prediction like this and compares such a
#: gold answer as text only; extraction returns such a line whole instead of fishing a
#: value out of it.
CODE_RE = re.compile(
    r"__|\b(?:import|lambda)\b|\b(?:eval|exec|open|compile|getattr|setattr|delattr|globals|locals"
    r"|vars|sympify|parse_expr|system|popen|subprocess)\s*\("
)

# Unicode symbols that models emit instead of LaTeX commands.
_UNICODE = {
    "\u2212": "-",  # minus sign
    "\u2013": "-",  # en dash
    "\u00d7": r"\times ",
    "\u00b7": r"\cdot ",
    "\u22c5": r"\cdot ",
    "\u00f7": r"\div ",
    "\u03c0": r"\pi ",
    "\u221e": r"\infty ",
    "\u221a": r"\sqrt",
    "\u2264": r"\le ",
    "\u2265": r"\ge ",
    "\u2260": r"\neq ",
    "\u2248": r"\approx ",
    "\u222a": r"\cup ",
    "\u2229": r"\cap ",
    "\u2208": r"\in ",
    "\u00b0": r"^\circ",
    "\u00b2": "^2",
    "\u00b3": "^3",
    "\uff1a": ":",  # full-width colon
    "\uff0c": ",",  # full-width comma
    "\u3002": ".",  # ideographic full stop
    "\u00a0": " ",
}

# Wrappers whose argument is kept verbatim (the wrapper is presentation).
_TEXT_WRAPPERS = (
    "text", "textbf", "textit", "textrm", "textsf", "texttt", "mathrm",
    "mathbf", "mathit", "mathsf", "mathtt", "boldsymbol", "bm", "mbox",
    "operatorname", "textnormal", "emph", "hbox",
)
_TEXT_WRAPPER_RE = re.compile(r"\\(?:%s)\s*\{" % "|".join(_TEXT_WRAPPERS))
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def match_brace(s: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx`` (None if unbalanced).

    Escaped braces (``\\{``, ``\\}``) are LaTeX set delimiters, not
    grouping, so they are skipped rather than counted.
    """
    depth = 0
    i = open_idx
    n = len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2  # skip the escaped character (\{, \}, \\ ...)
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _unwrap(s: str, pattern: re.Pattern, pad: bool) -> str:
    """Replace ``\\cmd{body}`` by ``body`` for every match of ``pattern``.

    ``pad`` surrounds the body with spaces: ``5\\text{cm}`` must become
    ``5 cm`` so single-letter units stay recognisable as separate words.
    """
    out = []
    pos = 0
    while True:
        m = pattern.search(s, pos)
        if m is None:
            out.append(s[pos:])
            return "".join(out)
        close = match_brace(s, m.end() - 1)
        if close is None:  # unbalanced: drop just the command name
            out.append(s[pos:m.start()])
            pos = m.end() - 1
            continue
        body = s[m.end():close]
        out.append(s[pos:m.start()])
        out.append(f" {body} " if pad else body)
        pos = close + 1


def _strip_outer_boxed(s: str) -> str:
    m = _BOXED_RE.match(s)
    if m:
        close = match_brace(s, m.end() - 1)
        if close == len(s) - 1:
            return s[m.end():close]
    return s


# Commands whose removal never changes the value.
_DROP_RE = re.compile(
    r"\\(?:displaystyle|textstyle|scriptstyle|limits|nolimits|mathstrut)(?![A-Za-z])"
)
_SIZE_RE = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|Biggl|Biggr|big|Big|bigg|Bigg)(?![A-Za-z])\s*\.?")
_SPACE_CMD_RE = re.compile(r"(?<!\\)\\(?:,|;|:|>| |quad(?![A-Za-z])|qquad(?![A-Za-z])|enspace(?![A-Za-z])|thinspace(?![A-Za-z]))|~")
_CANON_CMDS = [
    (re.compile(r"\\[dtc]frac(?![A-Za-z])"), r"\\frac"),
    (re.compile(r"\\[dt]binom(?![A-Za-z])"), r"\\binom"),
    (re.compile(r"\\(?:leq|leqslant|le)(?![A-Za-z])|<="), r"\\le "),
    (re.compile(r"\\(?:geq|geqslant|ge)(?![A-Za-z])|>="), r"\\ge "),
    (re.compile(r"\\(?:neq|ne)(?![A-Za-z])|(?<![\d)!])!="), r"\\neq "),  # not 5!=120
    (re.compile(r"\\lt(?![A-Za-z])"), "<"),
    (re.compile(r"\\gt(?![A-Za-z])"), ">"),
    (re.compile(r"\\(?:infin|infinity)(?![A-Za-z])"), r"\\infty "),
    (re.compile(r"\\(?:lvert|rvert|vert)(?![A-Za-z])"), "|"),
    (re.compile(r"\\(?:lbrace)(?![A-Za-z])"), r"\\{"),
    (re.compile(r"\\(?:rbrace)(?![A-Za-z])"), r"\\}"),
    (re.compile(r"\\(?:varnothing|emptyset)(?![A-Za-z])"), r"\\emptyset "),
    (re.compile(r"\\(?:dots|ldots|cdots)(?![A-Za-z])"), r"\\dots "),
]
# \sqrt2 -> \sqrt{2}; \frac12 -> \frac{1}{2}: single-token arguments.
_SQRT_BARE_RE = re.compile(r"\\sqrt\s*([0-9A-Za-z])")
_FRAC_BARE2_RE = re.compile(r"\\frac\s*([0-9A-Za-z])\s*([0-9A-Za-z])")
_FRAC_BARE1_RE = re.compile(r"\\frac\s*([0-9A-Za-z])\s*\{")
_FRAC_BARE_DEN_RE = re.compile(r"\\frac\s*\{([^{}]*)\}\s*([0-9A-Za-z])")
# One-character groups lose their braces, so x_{1} and x_1 (or 2^{3} and 2^3) read the same.
_SINGLE_GROUP_RE = re.compile(r"([_^])\{\s*([A-Za-z0-9])\s*\}")
# Thousands separators LaTeX spells out: 14{,}916 and 11,\!111.
_LATEX_THOUSANDS_RE = re.compile(r"(?<=\d)\s*(?:\{,\}|,\s*\\!)\s*(?=\d{3}(?!\d))")
# Mixed numbers: 918\frac{1}{2} is 918 + 1/2 when the fraction is proper.
_MIXED_RE = re.compile(r"(?<![\w.}^])(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}(?![\d{^])")
_MIXED_PLAIN_RE = re.compile(r"^(\d+) (\d+)/(\d+)$")
# "x \in [1, 2]" -> "[1, 2]"
_IN_PREFIX_RE = re.compile(r"^\s*[A-Za-z](?:_\{?\w+\}?)?\s*\\in\s*")
# Connectives between several answers ("x = 1 or x = 2", "(11,7)or(7,11)").
_CONNECTIVE_RE = re.compile(r" (?:and|or) |(?<=\))\s*(?:and|or)\s*(?=\()", re.IGNORECASE)
_WS_RE = re.compile(r"\s+")


def _undouble_backslashes(s: str) -> str:
    """Text escaped twice (``\\\\frac``) gets its commands back.

    Outside matrices a line break before letters is never meant; a matrix is
    only undone when every backslash in it is doubled.
    """
    if "\\begin" not in s:
        return re.sub(r"\\\\(?=[A-Za-z])", r"\\", s)
    runs = re.findall(r"\\+", s)
    if runs and all(len(r) % 2 == 0 for r in runs) and "\\\\begin" in s:
        return re.sub(r"\\\\", lambda m: "\\", s)
    return s


def _mixed(m: re.Match) -> str:
    whole, num, den = (int(g) for g in m.groups())
    if den == 0 or num >= den:
        return m.group(0)
    value = f"{whole * den + num}/{den}"
    return value if m.span() == (0, len(m.string)) else f"({value})"


def clean_latex(s: str) -> str:
    """Strip presentation-only LaTeX from a whole answer (value preserving)."""
    if not s:
        return ""
    for k, v in _UNICODE.items():
        if k in s:
            s = s.replace(k, v)
    s = _undouble_backslashes(s.strip())
    # "\$" is a currency sign; drop it before "$" math delimiters are removed.
    s = s.replace(r"\$", "")
    s = _strip_outer_boxed(s.replace("$", "").strip())
    s = _SIZE_RE.sub("", s)  # before \[ \] removal: "\left[" must keep "["
    s = s.replace(r"\[", "").replace(r"\]", "").replace(r"\(", "").replace(r"\)", "")
    s = _DROP_RE.sub("", s)
    s = _LATEX_THOUSANDS_RE.sub("", s)
    s = s.replace(r"\!", "")
    s = _SPACE_CMD_RE.sub(" ", s)
    s = _unwrap(s, _TEXT_WRAPPER_RE, pad=True)
    # Collapse whitespace early: later regexes then never see long runs.
    s = _WS_RE.sub(" ", s)
    for pat, rep in _CANON_CMDS:
        s = pat.sub(rep, s)
    s = s.replace(r"\%", "%")
    s = _SQRT_BARE_RE.sub(r"\\sqrt{\1}", s)
    s = _FRAC_BARE2_RE.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_BARE1_RE.sub(r"\\frac{\1}{", s)
    s = _FRAC_BARE_DEN_RE.sub(r"\\frac{\1}{\2}", s)
    s = _SINGLE_GROUP_RE.sub(r"\1\2", s)
    s = _MIXED_RE.sub(_mixed, s)
    s = s.replace(r"+\infty", r"\infty")
    s = _IN_PREFIX_RE.sub("", s)
    s = _CONNECTIVE_RE.sub(", ", s)
    s = _WS_RE.sub(" ", s).strip()
    s = _MIXED_PLAIN_RE.sub(_mixed, s)
    # A trailing full stop ends the sentence, it is not part of the answer; a
    # trailing lone backslash is a typing slip.
    while s.endswith((".", "\\")) and not s.endswith((r"\.", "\\\\")):
        s = s[:-1].rstrip()
    return s


def canonical(s: str) -> str:
    """Whitespace-free form used for exact string comparison."""
    return _WS_RE.sub("", s)


# Thousands separators: "1,000" / "12,345,678.5" as a whole answer (optionally
# followed by a unit or %), or inside a list that separates items with ", ".
_THOUSANDS_WHOLE_RE = re.compile(r"^([-+]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?)(?!\d|,\d)([^,]*)$")
_SPACE_THOUSANDS_RE = re.compile(r"^[-+]?\d{1,3}(?: \d{3})+(?:\.\d+)?$")
_THOUSANDS_TOKEN_RE = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d|,\d)")


# A decimal comma, where a thousands separator cannot be and a list is unlikely: 0,111 and
# 1000,99 (but 0,5 may be the list 0, 5).
_DECIMAL_COMMA_RE = re.compile(r"^([-+]?0),(\d{3,})$|^([-+]?\d{4,}),(\d+)$")


def fix_thousands(s: str) -> str:
    """Remove thousands separators without breaking comma-separated lists.

    A comma is ambiguous: ``1,000`` may be one thousand or the list
    ``1, 000``.  We only read it as a thousands separator when the digits
    fit ``\\d{1,3}(,\\d{3})+`` *and* either the whole answer is that number
    (plus an optional unit/percent), or the answer is a list whose items
    are separated by ", " (comma + space) while the number has none.
    """
    m = _THOUSANDS_WHOLE_RE.match(s)
    if m:
        return m.group(1).replace(",", "") + m.group(2)
    s = _DECIMAL_COMMA_RE.sub(lambda mm: ".".join(g for g in mm.groups() if g is not None), s)
    if ", " in s:
        return _THOUSANDS_TOKEN_RE.sub(lambda mm: mm.group(0).replace(",", ""), s)
    return s


_OPENERS = "([{"
_CLOSERS = ")]}"


def _top_level(s: str, chars: str):
    """Indices of the characters of ``chars`` in ``s`` that are not inside brackets.

    Any of ``( [ {`` opens and any of ``) ] }`` closes, without requiring
    the kinds to match, because half-open intervals ``[1, 2)`` mix them.
    """
    depth = 0
    for i, c in enumerate(s):
        if c in _OPENERS:
            depth += 1
        elif c in _CLOSERS:
            depth = max(depth - 1, 0)
        elif c in chars and depth == 0:
            yield i


def _cut(s: str, positions) -> list[str]:
    """``s`` split at ``positions`` (the characters there are dropped), pieces stripped."""
    bounds = [-1, *positions, len(s)]
    return [s[a + 1 : b].strip() for a, b in zip(bounds, bounds[1:])]


def split_top_level(s: str, seps: str = ",;") -> list[str]:
    """Split ``s`` at separator characters that are not inside brackets."""
    return _cut(s, _top_level(s, seps))


def split_equation(s: str) -> list[str] | None:
    """Split at top-level ``=`` signs; None when ``s`` is not an equation.

    ``<=``, ``>=``, ``!=`` are not equations (and ``\\le`` etc. were
    already spelled as commands by :func:`clean_latex`).
    """
    cuts = list(_top_level(s, "="))
    for i in cuts:
        prev = s[i - 1] if i else ""
        nxt = s[i + 1] if i + 1 < len(s) else ""
        if prev in "<>!=" or nxt == "=":
            return None
    sides = _cut(s, cuts)
    if not cuts or any(not x for x in sides):
        return None
    return sides


# Left-hand sides that merely name the answer: x, x_1, \theta, AB, f(2), P(A), I_{\max},
# y', \Delta p, and tuples, ratios or quotients of names: (p, q), V_1:V_2, \frac{NO}{BO}.
_NAME = (
    r"(?:[A-Za-z]{1,4}|\\[A-Za-z]+(?:\s*[A-Za-z](?![A-Za-z]))?)(?:_\{[^{}]{1,20}\}|_\\?[A-Za-z0-9]+)?"
    r"(?:'|\^\{?\\prime\}?)*(?:\s*\([^()=]{1,20}\))?"
)
NAME_RE = re.compile(
    rf"(?:{_NAME}|\(\s*{_NAME}(?:\s*,\s*{_NAME})+\s*\)|{_NAME}\s*[:/]\s*{_NAME}|\\frac\{{{_NAME}\}}\{{{_NAME}\}}"
    r"|\\angle\s*[A-Za-z]{1,3}|\|[A-Za-z]{1,3}\|)"
)


def strip_assignment(s: str, *, require_name: bool) -> str | None:
    """``"x = 5"`` -> ``"5"``.  Returns None if ``s`` has no top-level ``=``.

    With ``require_name`` the LHS must look like a name (``x``, ``x_1``,
    ``\\theta``, ``AB``, ``f(2)``); used for the gold side, where an
    arbitrary equation must stay an equation.  Without it (prediction
    side) a chain ``AB = \\sqrt{9+16} = 5`` reduces to its last value.
    """
    sides = split_equation(s)
    if sides is None:
        return None
    if require_name and not NAME_RE.fullmatch(sides[0].strip()):
        return None
    return sides[-1]


def strip_approximation(s: str) -> str:
    """``"\\frac{1}{3} \\approx 0.33"`` -> the exact side; ``"x \\approx 11"`` -> ``"11"``."""
    if r"\approx" not in s:
        return s
    first, *_, last = s.split(r"\approx")
    return last.strip() if NAME_RE.fullmatch(first.strip()) else first.strip()


@dataclass(frozen=True)
class Part:
    """One answer part with decorations removed.

    ``percent``/``degrees`` record that the part carried a ``%`` or a
    degree sign, so the judge can also try the /100 or radian reading.
    ``unit`` is the unit or free text dropped after the value; when it was
    written straight after it in one or two letters (``10m``) it may be a
    variable instead, so ``loose_unit`` tells the judge to keep it unless
    the other side carries the same one.
    """

    text: str
    percent: bool = False
    degrees: bool = False
    unit: str = ""
    loose_unit: bool = False


_PERCENT_RE = re.compile(r"\s*(?:%|\bpercent(?:age)?\b|\bpct\b)\s*$", re.IGNORECASE)
_DEGREE_RE = re.compile(
    r"\s*(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|\bdegrees?\b|\bdeg\b)\s*$",
    re.IGNORECASE,
)
# Words or units after a value ("5 cm", "12 square units", "9.8 m/s^2", "17 any text").
_TAIL_RE = re.compile(
    r"^(?P<v>.*?(?:\d|\}|\)|\\pi|\\infty))(?P<space>\s*)"
    r"(?P<u>[A-Za-z]+(?:\s*/\s*[A-Za-z]+)?(?:\s*\^\s*[23])?(?:\s+[A-Za-z]+(?:\s*\^\s*[23])?)*)$"
)
# Single letters that are units when set apart ("0.64 N"); any other lone letter is a variable.
_UNIT_LETTERS = set("mgsJNWVKLlhAT")
# Words that are mathematics, not units.
_MATH_WORDS = {"pi", "e", "i", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "sqrt", "mod", "infty"}


def _strip_tail(s: str) -> tuple[str, str, bool]:
    """(value, dropped unit, whether the unit is loose)."""
    m = _TAIL_RE.match(s)
    if not m or not m.group("v").strip():
        return s, "", False
    unit = m.group("u")
    words = re.findall(r"[A-Za-z]+", unit)
    if any(w.lower() in _MATH_WORDS for w in words):
        return s, "", False
    attached = not m.group("space")
    if len(words) == 1 and len(words[0]) == 1 and not (words[0] in _UNIT_LETTERS or attached):
        return s, "", False
    return m.group("v").strip(), unit, attached and len(words) == 1 and len(words[0]) <= 2


def normalize_part(s: str) -> Part:
    """Remove unit / percent / degree decorations from one answer part."""
    s = s.strip()
    percent = degrees = loose = False
    unit = ""
    # Decorations may stack ("30^\circ C" is rare; "50 \%" common), so loop
    # a few times until nothing changes.
    for _ in range(3):
        before = s
        m = _PERCENT_RE.search(s)
        if m and m.start() > 0:
            s, percent = s[: m.start()].strip(), True
        m = _DEGREE_RE.search(s)
        if m and m.start() > 0:
            s, degrees = s[: m.start()].strip(), True
        if not unit:
            s, unit, loose = _strip_tail(s)
        if s == before:
            break
    m = _THOUSANDS_WHOLE_RE.match(s)
    if m and not m.group(2).strip():
        s = m.group(1).replace(",", "")
    s = _SPACE_THOUSANDS_RE.sub(lambda mm: mm.group(0).replace(" ", ""), s)
    return Part(s, percent, degrees, unit, loose)
