"""The verifier's semantics as a table: (gold, extracted prediction, expected) by kind.

Written here, not taken from any peer's suite (those are measured separately, from outside the
project, by benchmarks/verifier_agreement.py).  Every kind of answer the judge reads has both
sides: pairs it must accept and near misses it must refuse, so a rule that grows too loose
fails here.  The README's "Verifier semantics" table is the prose form of these rows.
"""

MATCH = [
    # numbers: fractions, decimals, tolerance (relative 1e-4)
    ("\\frac{1}{2}", "0.5"),
    ("0.5", "\\dfrac{1}{2}"),
    ("\\frac12", "1/2"),
    ("\\frac{1}{3}", "0.3333"),
    ("0.125", ".125"),
    ("-7", "-7.0"),
    ("\\frac{6}{8}", "\\frac{3}{4}"),
    # scientific notation
    ("1500", "1.5\\times 10^{3}"),
    ("1500", "1.5e3"),
    ("3\\times10^{8}", "300000000"),
    ("2.5\\times10^{-3}", "0.0025"),
    # thousands separators and decimal commas
    ("1000", "1,000"),
    ("1234567", "1,234,567"),
    ("1,000", "1000.0"),
    ("1000, 2000", "2,000, 1,000"),
    ("14916", "14{,}916"),
    ("11111111100", "11,\\!111,\\!111,\\!100"),
    ("32349", "32,\\! 349"),
    ("2500000", "2 500 000"),
    ("4000", "4\\,000"),
    ("0.125", "0,125"),
    ("1234.5", "1234,5"),
    ("0, 5", "0,5"),
    # percent: a side with a % sign may be read as its number or as a fraction
    ("50\\%", "0.5"),
    ("50\\%", "50"),
    ("0.5", "50\\%"),
    ("25\\%", "\\frac{1}{4}"),
    ("28\\%", "28 percent"),
    ("28\\%", "28 percentage"),
    # units and free text after a value
    ("5", "5 cm"),
    ("5", "5\\text{ cm}"),
    ("12", "12 \\text{ square units}"),
    ("10", "10 \\text{ cm}^2"),
    ("10", "10\\text{ m}^{2}"),
    ("9.8", "9.8 m/s^2"),
    ("6", "6 weeks"),
    ("6", "6weeks"),
    ("0.64 N", "0.6400N"),
    ("17", "17 \\text{ is the count}"),
    ("1000", "1,000 \\text{ cm}"),
    ("\\$12.50", "12.5"),
    # degrees
    ("30^\\circ", "30"),
    ("30", "30°"),
    ("45^\\circ", "45 degrees"),
    ("\\frac{\\pi}{6}", "30^{\\circ}"),
    # mixed numbers
    ("918.5", "918\\frac{1}{2}"),
    ("918\\frac12", "\\frac{1837}{2}"),
    ("1.5", "1 1/2"),
    ("2.625", "2\\frac58"),
    ("-3.25", "-3\\frac{1}{4}"),
    ("50", "10^2\\frac{1}{2}"),
    # intervals and inequalities
    ("[1,2)", "\\left[1, 2\\right)"),
    ("(-\\infty, 3]", "(-\\infty,3]"),
    ("(-\\infty,1)\\cup(2,\\infty)", "(2,+\\infty)\\cup(-\\infty,1)"),
    ("(2,\\infty)", "x>2"),
    ("[0, \\frac{1}{2}]", "0 \\le x \\le 0.5"),
    ("x \\in [1, 2]", "[1,2]"),
    ("(3, \\infty)", "x \\gt 3"),
    ("x \\ge 5", "x >= 5"),
    ("x \\le 2", "x <= 2"),
    ("x < 3", "x \\lt 3"),
    ("x \\neq 3", "x != 3"),
    ("x < 1", "-x > -1"),
    ("(0, 1)", "0 < f(x) < 1"),
    # tuples (ordered), sets and lists (multisets)
    ("(3, 4)", "3, 4"),
    ("(1, \\frac{1}{2})", "(1, 0.5)"),
    ("(0; 0; 1)", "(0, 0, 1)"),
    ("\\{1, 2, 3\\}", "\\{3, 1, 2\\}"),
    ("\\{1, 2, 3\\}", "3, 2, 1"),
    ("1, 2", "2, 1"),
    ("x=1, y=2", "(1, 2)"),
    ("1 \\pm \\sqrt{2}", "1+\\sqrt{2}, 1-\\sqrt{2}"),
    ("2, 3", "x = 2 \\text{ or } x = 3"),
    ("(7, 11), (11, 7)", "(11,7)or(7,11)"),
    ("6, 8", "6 \\text{ and } 8"),
    # symbolic equality
    ("(x+1)^2", "x^2+2x+1"),
    ("x^2-1", "(x-1)(x+1)"),
    ("\\sqrt{8}", "2\\sqrt{2}"),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}"),
    ("\\frac{\\sqrt{2}}{2}", "0.70711"),
    ("\\sqrt[3]{27}", "3"),
    ("2^{10}", "1024"),
    ("\\binom{5}{2}", "10"),
    ("3+4i", "4i+3"),
    ("e^{2}", "e^2"),
    ("\\ln 2", "\\log 2"),
    ("\\frac{a+b}{2}", "\\frac{b}{2}+\\frac{a}{2}"),
    ("|x-1|", "|1-x|"),
    ("1 - \\frac{1}{\\mathrm{e}}", "\\frac{e-1}{e}"),
    # parser coverage: powers of functions, subscripts and superscripts, primes, degrees inside
    # functions, sums, base subscripts, function arguments without brackets
    ("\\tan^2(y) + 1", "\\sec^2(y)"),
    ("\\sin^2 x + \\cos^2 x", "1"),
    ("x_1^2 + 1", "1 + x_{1}^{2}"),
    ("v^2_0", "v_0^2"),
    ("2\\omega_{L}^{\\prime}", "\\omega_L' + \\omega_L'"),
    ("\\sin(90^{\\circ} - x)", "\\cos x"),
    ("\\cos(60^\\circ)", "\\frac{1}{2}"),
    ("\\sin^{-1}(1)", "\\frac{\\pi}{2}"),
    ("\\sin 2x", "2\\sin x \\cos x"),
    ("\\log_2 8", "3"),
    ("\\cos ^{2}(\\frac{\\pi}{4})", "0.5"),
    ("\\sum_{k=1}^{n} k", "\\frac{n(n+1)}{2}"),
    ("4210_{7}", "4210_7"),
    # approximations: the exact side counts, or the value a name is approximately equal to
    ("\\frac{\\sqrt{3}}{3}", "\\frac{\\sqrt{3}}{3} \\approx 0.577"),
    ("11", "x \\approx 11"),
    ("\\frac{1}{3}", "x = \\frac{1}{3} \\approx 0.33"),
    # equations
    ("y=2x+1", "2x-y+1=0"),
    ("x^2+y^2=1", "2x^2+2y^2=2"),
    ("5", "x = 5"),
    ("x=5", "5"),
    ("2", "AB = \\sqrt{4} = 2"),
    ("5", "2 + 3 = 5"),
    # equations whose left side only names the answer, however it is spelt
    ("(p, q) = (3, 2)", "(3, 2)"),
    ("V_1 : V_2 = 11 : 21", "11:21"),
    ("\\frac{AM}{MB} = \\frac{1}{3}", "\\frac{1}{3}"),
    ("I_{\\max} = \\frac{U}{R}", "\\frac{U}{R}"),
    ("a_{n} = 2n + 1", "2n+1"),
    ("a_n = 2n+1", "a_{n} = 1 + 2n"),
    ("\\Phi(x, y) = \\frac{x+1}{2y}", "\\Phi(x,y) = \\frac{x}{2y} + \\frac{1}{2y}"),
    ("f(x) = x^2", "x^2"),
    ("\\begin{cases} a+b=\\frac12 \\\\ a-b=3 \\end{cases}", "\\begin{cases} a+b=0.5 \\\\ a-b=3 \\end{cases}"),
    # matrices
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}"),
    ("\\begin{pmatrix} \\frac12 & 0 \\\\ 0 & 1 \\end{pmatrix}", "\\begin{pmatrix} 0.5 & 0 \\\\ 0 & 1 \\end{pmatrix}"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "(1, 2)"),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\left[\\begin{array}{cc} 1 & 2 \\\\ 3 & 4 \\end{array}\\right]"),
    ("\\begin{pmatrix} 2x & 1 \\\\ 0 & x^2 \\end{pmatrix}", "\\begin{pmatrix} x+x & 1 \\\\ 0 & x\\cdot x \\end{pmatrix}"),
    ("\\begin{pmatrix} 4 & 6 \\end{pmatrix}", "\\begin{pmatrix} 1 & 2 \\end{pmatrix} + \\begin{pmatrix} 3 & 4 \\end{pmatrix}"),
    # text, escaping and presentation
    ("\\emptyset", "\\varnothing"),
    ("\\text{Yes}", "yes"),
    ("\\frac{1}{2}", "$\\frac{1}{2}$."),
    ("10", "\\left( 10 \\right)"),
    ("7", "\\boxed{7}"),
    ("[-2, 0.5]", "$\\boxed{[-2, \\frac{1}{2}]}$"),
    ("\\sqrt{5}", "\\\\sqrt{5}"),
    ("185", "185\\"),
]

NO_MATCH = [
    # numbers
    ("\\frac{1}{3}", "0.33"),
    ("\\frac{2}{3}", "\\frac{3}{2}"),
    ("\\frac{1}{2}", "2"),
    ("-\\frac{1}{2}", "\\frac{1}{2}"),
    ("-3", "3"),
    ("3", "4"),
    ("0.125", "0.12"),
    ("100", "100.5"),
    ("0", "0.001"),
    ("1", "1.001"),
    ("\\pi", "3.14"),
    ("e", "2.7"),
    ("2.5\\times10^{-3}", "0.025"),
    ("2^{10}", "1000"),
    # thousands separators never merge a real list, and digits must agree
    ("1000", "1,001"),
    ("14916", "14{,}961"),
    ("1, 234", "1234"),
    ("2, 3", "2.3"),
    ("0.5", "0,5"),  # 0,5 is read as the list 0, 5: a decimal comma needs 0,ddd or dddd,d
    ("5! = 120", "5 \\neq 120"),
    # percent: no % sign on either side, no percent reading
    ("0.5", "50"),
    ("10", "0.1"),
    ("0.1", "10"),
    ("10", "1000"),
    ("10\\%", "1000"),
    ("10\\%", "0.01"),
    ("25\\%", "0.3"),
    # units: a different value stays different; letters against the value may be a variable
    ("5", "6 cm"),
    ("10m", "10"),
    ("10cm", "10"),
    ("12", "12 x"),
    ("5", "5x"),
    # mixed numbers
    ("918.5", "918\\frac{1}{3}"),
    ("\\frac{3}{2}", "3\\frac{1}{2}"),
    ("1.5", "1 1/3"),
    # intervals, inequalities
    ("[1,2)", "[1,2]"),
    ("(1,2)", "[1,2]"),
    ("[1, 2]", "(1, 2)"),
    ("[0, 5]", "(0, 5]"),
    ("(-\\infty,1)\\cup(2,\\infty)", "(-\\infty,1]\\cup(2,\\infty)"),
    ("(1, 2) \\cup (3, 4)", "(1, 2) \\cup (3, 5)"),
    ("(3, \\infty)", "x \\ge 3"),
    ("x \\ge 5", "x > 5"),
    ("x \\le 2", "x < 2"),
    ("x < 3", "x > 3"),
    ("x \\neq 3", "x = 3"),
    ("x < 1", "-x < -1"),
    # tuples, sets, lists
    ("(1,2)", "(2,1)"),
    ("(1, 2, 3)", "(1, 3, 2)"),
    ("(2, 3)", "2, 4"),
    ("1, 1, 2", "1, 2, 2"),
    ("1, 2", "1, 2, 3"),
    ("1, 2", "1"),
    ("\\{1, 2\\}", "\\{1, 2, 2\\}"),
    ("1 \\pm \\sqrt{2}", "1+\\sqrt{2}"),
    ("\\{1, 2\\}", "(1, 2)"),  # a set is not an ordered pair
    ("6", "3x + 2y = 6"),  # an equation in unknowns is not its right side
    ("1", "x^2 - y^2 = 1"),
    ("\\emptyset", "5 \\neq 120"),
    ("[1, 2)", "\\begin{pmatrix} 1 & 2 \\end{pmatrix}"),
    # symbolic
    ("x+1", "x-1"),
    ("x^2+1", "(x+1)^2"),
    ("x^2", "x^3"),
    ("2x", "x^2"),
    ("\\sqrt{2}", "2"),
    ("\\sqrt{2}", "\\sqrt{3}"),
    ("\\frac{a}{b}", "\\frac{b}{a}"),
    ("\\frac{a+b}{2}", "\\frac{a-b}{2}"),
    ("|x|", "x"),
    ("x", "y"),
    ("10!", "3628801"),
    ("1000000", "1000001"),
    ("\\frac{1}{7}", "\\frac{142857}{1000000}"),
    ("\\binom{5}{2}", "20"),
    ("i", "-i"),
    ("3+4i", "3-4i"),
    ("\\infty", "-\\infty"),
    ("\\ln 2", "\\lg 2"),
    ("1 - \\frac{1}{e}", "1 + \\frac{1}{e}"),
    # parser coverage
    ("\\tan^2(y) + 1", "\\tan^2(y)"),
    ("\\sin(90^{\\circ} - x)", "\\sin x"),
    ("\\sin 2x", "2\\sin x"),
    ("\\log_2 8", "4"),
    ("x_1^2", "x_2^2"),
    ("\\sum_{k=1}^{n} k", "\\frac{n(n-1)}{2}"),
    # approximations
    ("\\frac{\\sqrt{3}}{3}", "\\frac{\\sqrt{2}}{2} \\approx 0.707"),
    ("11", "x \\approx 12"),
    # equations: a sign flip, a swapped coefficient, a left side that is more than a name
    ("y=2x+1", "y=2x-1"),
    ("x^2+y^2=1", "x^2-y^2=1"),
    ("a_n = 2n+1", "a_n = 2n-1"),
    ("2x + 3y = 6", "3x + 2y = 6"),
    ("x=5", "x=6"),
    ("x + y = 5", "5"),
    ("2x = 4", "4"),
    ("(p, q) = (3, 2)", "(2, 3)"),
    ("V_1 : V_2 = 11 : 21", "21:11"),
    # matrices: a wrong entry, a transpose, a shape, a sign, not a matrix
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 5 \\end{pmatrix}"),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}"),
    ("\\begin{pmatrix} 1 & 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\\\ 3 \\end{pmatrix}"),
    ("\\begin{pmatrix} 1 & -2 \\end{pmatrix}", "\\begin{pmatrix} 1 & 2 \\end{pmatrix}"),
    ("\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}", "1"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "(2, 1)"),
    # words
    ("yes", "no"),
    ("\\text{odd}", "\\text{even}"),
]

JUDGE_CASES = [(g, p, True) for g, p in MATCH] + [(g, p, False) for g, p in NO_MATCH]

MC4 = ["3", "6", "12", "24"]  # options A-D

# (gold, prediction, choices, expected) for multiple choice.
CHOICE_CASES = [
    ("B", "B", None, True),
    ("B", "(B)", MC4, True),
    ("B", "B.", MC4, True),
    ("B", "\\text{(B) } 6", MC4, True),
    ("C", "(C) 12", MC4, True),
    ("C", "12", MC4, True),  # the option text of the gold letter
    ("12", "C", MC4, True),  # gold given as option text, prediction a letter
    ("A", "Answer: A", MC4, True),
    ("(D)", "d", MC4, True),
    ("C", "\\text{(C)}", None, True),
    ("B", "C", MC4, False),
    ("C", "6", MC4, False),
    ("A", "E", MC4, False),  # not an option
    ("12", "B", MC4, False),
    ("B", "(C) 6", MC4, False),  # the letter decides, not the text beside it
]

# (gold, trajectory, choices, expected reward, expected extracted answer): the extraction kinds.
TRAJECTORY_CASES = [
    ("\\frac{\\sqrt3}{2}", "...\n**Final answer**\n\\boxed{\\dfrac{\\sqrt{3}}{2}}", None, 1.0, "\\dfrac{\\sqrt{3}}{2}"),
    ("4", "<think>\\boxed{3}</think>The answer is \\boxed{4}", None, 1.0, "4"),
    ("3", "<think>\\boxed{3}</think>The answer is \\boxed{4}", None, 0.0, "4"),
    ("3", "<think>\\boxed{3} ...", None, 0.0, None),
    ("C", "Comparing options... the answer is (C).", MC4, 1.0, "C"),
    ("C", "**Final answer**\n\\boxed{(C) 12}", MC4, 1.0, "(C) 12"),
    ("B", "**Final answer**\n\\boxed{12}", MC4, 0.0, "12"),
    ("0.5", "**Final Answer:** 50\\%", None, 1.0, "50\\%"),
    # several boxes of one answer are joined; a box after second thoughts stands alone
    ("1, 2, 3", "So the roots are \\boxed{1}, \\boxed{2} and \\boxed{3}.", None, 1.0, "1, 2, 3"),
    ("(1, 2), (3, 4)", "The pairs: $\\boxed{(1, 2)} \\quad \\text{and} \\quad \\boxed{(3, 4)}$", None, 1.0, "(1, 2), (3, 4)"),
    ("4", "First \\boxed{3}, but then the check fails, so \\boxed{4}.", None, 1.0, "4"),
    # a final-answer marker after the last box wins
    ("4", "We get \\boxed{3}.\n\nThat used the wrong radius.\n**Final answer:** 4", None, 1.0, "4"),
    # the sentence after the marker: its value, not a stray $...$, and it ends at the full stop
    ("34", "Final Answer: The largest $n$ is 34.", None, 1.0, "34"),
    ("42", "Final answer: 42. This follows from $x = 4$ and $y = 2$.", None, 1.0, "42"),
    ("7", "**Final Answer**: Jane needs 7 more hours to finish the task.", None, 1.0, "7"),
    ("12, 13", "Final Answer: The final answer is $12$ and $13$. I hope it is correct.", None, 1.0, "12, 13"),
    # no marker, no box: the math that ends the text, or the last line's last value
    ("9", "Answer \\[\n9\n\\]", None, 1.0, "9"),
    ("1000.99", "so the total comes to 1,000.99 dollars", None, 1.0, "1,000.99"),
    ("-\\frac{10}{9}", "-\\frac{10}{9}", None, 1.0, "-\\frac{10}{9}"),
    ("12", "there are 12 ways, and $d = \\frac{90}{n}$ gives each of them", None, 0.0, "d = \\frac{90}{n}"),
    ("2", "AZYUK2A", None, 0.0, "AZYUK2A"),
]
