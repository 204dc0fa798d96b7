"""Pull the final answer out of a reasoning trajectory.

SOPHIA trajectories end with a bold ``**Final answer**`` marker followed
by ``\\boxed{...}``; R1-style outputs put the reasoning inside
``<think>...</think>`` and the answer in the summary after it.  The
extraction order is, most to least reliable:

1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (brace-matched, so nested
   ``\\frac{1}{2}`` inside the box survives);
2. the text after the last final-answer marker ("Final answer",
   "Final Answer:", "**Answer:**", "Answer:" at a line start);
3. the last ``$...$`` (or ``\\(...\\)``) math segment of the last line.

Everything runs in linear time: trajectories are untrusted and can be
very long, and this code also runs in the parent process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from .normalize import clean_latex, match_brace

__all__ = [
    "answer_region",
    "choice_letter",
    "choice_options",
    "extract_answer",
    "extract_choice",
    "find_boxed",
]

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def find_boxed(text: str) -> list[str]:
    """Contents of every ``\\boxed{}`` / ``\\fbox{}`` in order of appearance.

    Also accepts the brace-less form ``\\boxed 5`` (one token).  An
    unbalanced box (truncated generation) is ignored.
    """
    out = []
    pos = 0
    n = len(text)
    while True:
        m = _BOX_RE.search(text, pos)
        if m is None:
            return out
        i = m.end()
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == "{":
            close = match_brace(text, i)
            if close is None:
                return out
            out.append(text[i + 1:close].strip())
            # Continue *inside* the box too? No: a box nested in a box is
            # not a separate answer, so resume after the closing brace.
            pos = close + 1
        else:
            tok = re.match(r"[^\s$]+", text[i:i + 200])
            if tok and i > m.end():
                out.append(tok.group(0).rstrip(".,;"))
            pos = i


def answer_region(text: str) -> str | None:
    """The part of a trajectory that may contain the answer.

    For R1-style output this is the summary after the last ``</think>``;
    an opened but never closed ``<think>`` means the generation stopped
    mid-thought, so there is no answer (we do not fish answers out of
    unfinished reasoning: that would reward truncated rollouts).
    """
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        return None
    return text


_MARKER_RE = re.compile(
    r"final\s+answer"
    r"|\*\*\s*answer\s*[:：]?\s*\*\*"
    r"|^[ \t>#*_]*answer\s*[:：]",
    re.IGNORECASE | re.MULTILINE,
)
_LEAD_RE = re.compile(
    r"^(?:[\s*_:：#>]|is\b|the\s+answer\s+is\b|would\s+be\b|will\s+be\b)*",
    re.IGNORECASE,
)
_COPULA_RE = re.compile(r"^[A-Za-z][\w\s,']*?\b(?:is|are|equals|was)\s+(\S.*)$", re.IGNORECASE)
_INLINE_MATH_RE = re.compile(r"\$([^$\n]+)\$|\\\((.+?)\\\)")


# Lines are clipped before the (lazy) math regexes run: a pathological
# line full of unclosed "\(" would otherwise cost quadratic time.
_MAX_LINE = 4000


def _last_inline_math(line: str) -> str | None:
    line = line[-_MAX_LINE:]
    found = None
    for m in _INLINE_MATH_RE.finditer(line):
        found = m.group(1) if m.group(1) is not None else m.group(2)
    return found.strip() if found and found.strip() else None


def _after_marker(region: str) -> str | None:
    last = None
    for m in _MARKER_RE.finditer(region):
        last = m
    if last is None:
        return None
    rest = region[last.end():]
    rest = rest[_LEAD_RE.match(rest).end():]
    # Display math right after the marker: take its whole body.
    for open_, close in (("$$", "$$"), (r"\[", r"\]")):
        if rest.startswith(open_):
            end = rest.find(close, len(open_))
            if end > 0:
                body = rest[len(open_):end].strip()
                return body or None
    line = next((ln.strip() for ln in rest.splitlines() if ln.strip()), "")
    if not line:
        return None
    math = _last_inline_math(line)
    if math:
        return math
    line = line.strip("*_ ").rstrip(".").strip()
    # Prose like "The area is 12": keep what follows the last copula.
    m = _COPULA_RE.match(line)
    if m:
        line = m.group(1).strip("*_ ")
    return line or None


def _last_line_math(region: str) -> str | None:
    lines = [ln for ln in region.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    last = lines[-1][-_MAX_LINE:]
    math = _last_inline_math(last)
    if math:
        return math
    m = re.search(r"\\\[(.+?)\\\]|\$\$(.+?)\$\$", last)
    if m:
        return (m.group(1) or m.group(2)).strip() or None
    return None


def extract_answer(text: str | None) -> str | None:
    """The final answer of a trajectory, or None when there is none."""
    if not text:
        return None
    region = answer_region(text)
    if region is None or not region.strip():
        return None
    # Some R1-style templates wrap the summary in <answer>...</answer>.
    tagged = _answer_tag(region)
    if tagged is not None:
        region = tagged
    boxed = [b for b in find_boxed(region) if b]
    if boxed:
        return boxed[-1]
    found = _after_marker(region) or _last_line_math(region)
    if found is None and tagged is not None:
        found = clean_latex(tagged) or None
    return found


def _answer_tag(region: str) -> str | None:
    end = region.rfind("</answer>")
    if end < 0:
        return None
    start = region.rfind("<answer>", 0, end)
    if start < 0:
        return None
    return region[start + len("<answer>"):end]


# ----------------------------------------------------------------------------
# Multiple choice
# ----------------------------------------------------------------------------

_LABEL_RE = re.compile(r"^\s*\(?([A-Z])\)?\s*[.:：)]\s*")


def choice_options(choices: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """Normalise choices to ``{"A": text, ...}``.

    A sequence is labelled A, B, C... in order; labels already written
    into the text ("A. 3", "(B) 6") are removed from the option text.
    """
    if not choices:
        return {}
    if isinstance(choices, Mapping):
        items = [(str(k).strip().strip("().").upper(), str(v)) for k, v in choices.items()]
    else:
        items = [(chr(ord("A") + i), str(c)) for i, c in enumerate(choices)]
    out = {}
    for letter, txt in items:
        m = _LABEL_RE.match(txt)
        if m and m.group(1) == letter:
            txt = txt[m.end():]
        out[letter] = txt.strip()
    return out


_LETTER_PATTERNS = [
    re.compile(r"^\(?([A-Z])\)?[.:：)]?$"),  # B  (B)  B.  B)
    re.compile(r"^\(([A-Z])\)"),  # (C) 12
    re.compile(r"^([A-Z])[.:：)]\s*\S"),  # C. 12   C: 12
    re.compile(r"^(?i:option|choice|answer)\s*(?i:is)?\s*[:：]?\s*\(?([A-Z])\)?(?:[\s.:：)]|$)"),
]


def choice_letter(answer: str | None, valid: Sequence[str] | None = None) -> str | None:
    """The option letter a short answer names ("(B)", "B.", "\\boxed{(C) 12}").

    ``valid`` restricts the letters (e.g. A-D for four options).  A
    lone lowercase letter is accepted only when ``valid`` is given,
    because without choices "b" is more likely a variable.
    """
    if not answer:
        return None
    s = clean_latex(answer).strip().strip("*_").strip()
    if valid and re.fullmatch(r"\(?[a-z]\)?\.?", s):
        s = s.upper()
    for pat in _LETTER_PATTERNS:
        m = pat.match(s)
        if m:
            letter = m.group(1)
            if valid is None or letter in valid:
                return letter
            return None
    return None


_TEXT_CHOICE_RES = [
    # "the answer is (B)", "Answer: B", "correct option is **C**"
    re.compile(
        r"(?:answer|option|choice)\s*(?:is|:|：)?\s*[:：]?\s*(?:\*\*)?\s*\(([A-Z])\)"
        r"|(?:answer|option|choice)\s*(?:is|:|：)?\s*[:：]?\s*(?:\*\*)?\s*([A-Z])(?=\s*(?:\*\*)?\s*(?:$|[.,;:)\]]))",
        re.IGNORECASE | re.MULTILINE,
    ),
]


def extract_choice(
    text: str | None, choices: Sequence[str] | Mapping[str, str] | None = None
) -> str | None:
    """The option letter chosen by a trajectory, or None.

    First the regular answer (boxed / marker / last math) is read as a
    letter or matched against the option texts; then phrases such as
    "the answer is (B)" are searched in the answer region.
    """
    if not text:
        return None
    region = answer_region(text)
    if region is None:
        return None
    opts = choice_options(choices)
    valid = list(opts) if opts else None
    ans = extract_answer(text)
    if ans is not None:
        letter = choice_letter(ans, valid)
        if letter:
            return letter
        if opts:
            key = re.sub(r"\s+", "", clean_latex(ans))
            hits = [k for k, v in opts.items() if re.sub(r"\s+", "", clean_latex(v)) == key]
            if len(hits) == 1:
                return hits[0]
    last = None
    for pat in _TEXT_CHOICE_RES:
        for m in pat.finditer(region):
            letter = m.group(1) or m.group(2)
            # The letter must be uppercase in the text itself (IGNORECASE
            # would otherwise turn "answer is a" into option A).
            if letter.isupper() and (valid is None or letter in valid):
                last = letter
    return last
