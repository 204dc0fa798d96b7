"""Pull the final answer out of a reasoning trajectory.

SOPHIA trajectories end with a bold ``**Final answer**`` marker followed
by ``\\boxed{...}``; R1-style outputs put the reasoning inside
``<think>...</think>`` and the answer in the summary after it.  The
extraction order is, most to least reliable:

1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (brace-matched), joined with
   the boxes just before it when only separators stand between them
   (``\\boxed{1}, \\boxed{2}`` or ``\\boxed{3} and \\boxed{4}``) -- unless a
   final-answer marker comes after the last box, which then wins;
2. the first sentence after the last final-answer marker ("Final answer",
   "**Answer:**", "Answer:" at a line start): its display math, else the
   value after its last "is"/"=", else its last ``$...$``, else the text;
3. the math segment that ends the text; else the last line itself when it
   is short bare mathematics, else its last math segment or number.

Everything runs in linear time: trajectories are untrusted and can be
very long, and this code also runs in the parent process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from .normalize import CODE_RE, clean_latex, match_brace

__all__ = [
    "answer_region",
    "choice_letter",
    "choice_options",
    "extract_answer",
    "extract_choice",
    "find_boxed",
]

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, content)`` of every box; an unbalanced one ends the scan."""
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
            # A box nested in a box is not a separate answer: resume after it.
            out.append((m.start(), close + 1, text[i + 1:close].strip()))
            pos = close + 1
        else:
            tok = re.match(r"[^\s$]+", text[i:i + 200])
            if tok and i > m.end():
                out.append((m.start(), i + tok.end(), tok.group(0).rstrip(".,;")))
            pos = i


def find_boxed(text: str) -> list[str]:
    """Contents of every ``\\boxed{}`` / ``\\fbox{}`` in order of appearance.

    Also accepts the brace-less form ``\\boxed 5`` (one token).  An
    unbalanced box (truncated generation) is ignored.
    """
    return [content for _, _, content in _boxes(text)]


# What may stand between two pieces of one answer: math delimiters, spacing, \text{}, and
# "and"/"or"/a comma -- for boxes also a few words ("\boxed{1} papers and \boxed{2} bins"),
# but no sentence and no second thoughts ("\boxed{3}, but then \boxed{4}").
_GAP_NOISE_RE = re.compile(r"\$|\\[()\[\]]|\\(?:quad|qquad|text|mbox|textrm)(?![A-Za-z])|\\[,;:!]|[{}~\"]")
_GAP_SEPARATORS_RE = re.compile(r"^[\s,;&]*(?:\b(?:and|or)\b)?[\s,;&]*$", re.IGNORECASE)
_GAP_WORDS_RE = re.compile(r"^[^.\n]{0,40}$")
_CONNECTIVE_WORD_RE = re.compile(r"[,;&]|\b(?:and|or)\b", re.IGNORECASE)
_SECOND_THOUGHT_RE = re.compile(r"\b(?:but|then|not|wait|actually|instead|however|so|wrong|correct)\b", re.IGNORECASE)


def _joins(gap: str, words_allowed: bool) -> bool:
    gap = _GAP_NOISE_RE.sub(" ", gap).strip()
    if _GAP_SEPARATORS_RE.match(gap):
        return True
    return (words_allowed and bool(_GAP_WORDS_RE.match(gap)) and bool(_CONNECTIVE_WORD_RE.search(gap))
            and not _SECOND_THOUGHT_RE.search(gap))


_MAX_CHAIN = 64  # more parts than the judge would compare anyway


def _chain(text: str, pieces: list[tuple[int, int, str]], words_allowed: bool) -> str:
    """The last piece joined with the pieces chained before it, as one comma list."""
    chain = [pieces[-1]]
    for prev in reversed(pieces[-_MAX_CHAIN:-1]):
        if not _joins(text[prev[1]:chain[-1][0]], words_allowed):
            break
        chain.append(prev)
    return ", ".join(content for _, _, content in reversed(chain))


def _joined_box(region: str) -> tuple[int, str] | None:
    """(end of the last box, its answer joined with the boxes chained before it)."""
    boxes = [b for b in _boxes(region) if b[2]]
    return (boxes[-1][1], _chain(region, boxes, words_allowed=True)) if boxes else None


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
    r"|^[ \t>#*_]*answer\s*(?:[:：]|(?=\$|\\\[|\\\())",
    re.IGNORECASE | re.MULTILINE,
)
_LEAD_RE = re.compile(
    r"^(?:[\s*_:：#>]|is\b|the\s+answer\s+is\b|would\s+be\b|will\s+be\b)*",
    re.IGNORECASE,
)
_COPULA_RE = re.compile(r"^[A-Za-z][\w\s,']*?\b(?:is|are|equals|was)\s+(\S.*)$", re.IGNORECASE)
_INLINE_MATH_RE = re.compile(r"\$((?:\\\$|[^$\n])+)\$|\\\((.+?)\\\)")
# "... $n$ is 34": a value after the last math segment of the sentence.
_TRAILING_VALUE_RE = re.compile(r"^\s*(?:is|are|equals|=|was)\s+([-+]?[\d.,]*\d[^\s]*)\s*$", re.IGNORECASE)
# A number standing alone (not the 2 of "AZYUK2A" nor of "\frac{1}{2}"), with its separators,
# a fraction bar or a percent sign: 1,000.99  1000,99  1 000  2/3  100%.
_NUMBER_RE = re.compile(r"(?<![A-Za-z\d.,/{^_\\])[-+]?(?:\d+(?:[.,]\d+)*(?:(?: \d{3})+(?!\d))?|\.\d+)(?:/\d+)?%?(?![\d}])")
_PROSE_RE = re.compile(r"(?:\b[A-Za-z]{2,}\b.*){3}")

# Lines are clipped before the (lazy) math regexes run: a pathological
# line full of unclosed "\(" would otherwise cost quadratic time.
_MAX_LINE = 4000


def _last_inline_math(line: str) -> tuple[str, int] | None:
    """The last ``$...$`` / ``\\(...\\)`` of a line (joined with the ones chained
    before it: ``$1$ and $2$``) and where it ends."""
    line = line[-_MAX_LINE:]
    found = []
    for m in _INLINE_MATH_RE.finditer(line):
        body = (m.group(1) if m.group(1) is not None else m.group(2)).strip()
        if body:
            found.append((m.start(), m.end(), body))
    return (_chain(line, found, words_allowed=False), found[-1][1]) if found else None


def _last_value(line: str) -> str | None:
    """Whichever ends later on the line: its last math segment or its last bare number."""
    line = line[-_MAX_LINE:]
    math = _last_inline_math(line)
    numbers = list(_NUMBER_RE.finditer(_INLINE_MATH_RE.sub(lambda m: " " * len(m.group(0)), line)))
    if numbers and (math is None or numbers[-1].end() > math[1]):
        return numbers[-1].group(0).rstrip(",")
    return math[0] if math else None


def _first_sentence(line: str) -> str:
    """``line`` up to the first full stop outside ``$...$`` (a decimal point is not one)."""
    in_math = False
    for i, c in enumerate(line[:_MAX_LINE]):
        if c == "$":
            in_math = not in_math
        elif c in ".。!?" and not in_math and (i + 1 == len(line) or line[i + 1].isspace()):
            return line[:i]
    return line


def _after_marker(region: str) -> tuple[int, str] | None:
    """(where the last final-answer marker starts, the answer that follows it)."""
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
                return (last.start(), body) if body else None
    line = next((ln.strip() for ln in rest.splitlines() if ln.strip()), "")
    line = _first_sentence(line).strip()
    if not line or CODE_RE.search(line):
        return (last.start(), line) if line else None
    math = _last_inline_math(line)
    if math:
        value = _TRAILING_VALUE_RE.match(line[math[1]:])
        return last.start(), value.group(1) if value else math[0]
    line = line.strip("*_ ").strip()
    # Prose like "The area is 12": keep what follows the last copula; in a longer
    # sentence ("Jane started growing it 3 hours ago") its last number.
    m = _COPULA_RE.match(line)
    if m:
        line = m.group(1).strip("*_ ")
    if _PROSE_RE.search(line):
        line = _last_value(line) or line
    return (last.start(), line) if line else None


def _text_end(region: str) -> str | None:
    """The math segment that ends the text, else the last number of its last line."""
    tail = region[-_MAX_LINE:].rstrip(" \t\n.,;:!*_")
    for open_, close in (("$$", "$$"), (r"\[", r"\]")):
        if tail.endswith(close):
            start = tail.rfind(open_, 0, len(tail) - len(close))
            if start >= 0:
                return tail[start + len(open_):len(tail) - len(close)].strip() or None
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    if not lines:
        return None
    # A short line of bare mathematics ("-\frac{10}{9}", "7,425,000") is the answer itself.
    # (A box left open there means the generation was cut off: no answer.)
    if _BOX_RE.search(lines[-1]):
        return None
    if CODE_RE.search(lines[-1]):
        return lines[-1]
    if "$" not in lines[-1] and len(lines[-1]) <= 100 and not _PROSE_RE.search(lines[-1]):
        return lines[-1]
    return _last_value(lines[-1])


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
    boxed, marked = _joined_box(region), _after_marker(region)
    if boxed is not None and (marked is None or marked[0] < boxed[0]):
        return boxed[1]
    if marked is not None:
        return marked[1]
    found = _text_end(region)
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
