r"""Safe math for scorers: a small LaTeX parser that builds sympy objects, and evaluators that never run model text.

Why this exists: the official MATH-V scorer decides numeric equality with `eval(str(latex2sympy(s)))` under
`from math import *` (EVAL.md §2.5, §6). Running Python `eval` on model output is not acceptable, so this module
replaces both halves:

* `parse_latex(s)` - a recursive-descent parser for the LaTeX subset that answers use. It builds sympy objects
  directly (`evaluate=False`, no `sympify`, no `parse_expr`, no attribute access); unknown commands become opaque
  symbols. Its quirks follow latex2sympy2 1.9.1 where they decide official flags: a prefix is parsed and a stray
  closing bracket or a lone `.` ends the input (`"17.the area is..."` -> 17), `a:b` is division, `1,234` is one
  number while `1,2` is a list, letters multiply (`2ab`), `6\frac{1}{4}` is 6 * 1/4, decimals are exact rationals.
* `python_value(expr)` - evaluates a sympy tree with the semantics of Python `eval` of its printed form under
  `from math import *`: `E`, `I`, `oo`, `Abs`, `ceiling` and free symbols are names that do not exist there and
  fail; `x**(1/3)` of a negative base is complex and fails `round`; ints stay exact ints.
* `Evaluator` - runs the above in a worker process with a per-item time limit (huge powers and factorials can
  hang sympy or CPython's bigint code, which no signal can interrupt), caps input length and caches results.

An optional backend uses latex2sympy2 (if installed) as the parser; evaluation is still `python_value`.
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import sympy

MAX_INPUT_CHARS = 4000  # longer "answers" are whole paragraphs; latex2sympy rejects or truncates them anyway
DEFAULT_TIMEOUT_S = 5.0
_MAX_INT_EXPONENT = 4096  # larger integer powers are refused (official code would hang or run out of memory)
_MAX_FACTORIAL = 2000
_MAX_RESULT_BITS = 1 << 20  # ~315k decimal digits: far beyond any answer, still fast


class MathParseError(ValueError):
    """The text is not in the supported LaTeX subset (the official code's `except` branch)."""


# ----------------------------------------------------------------------------------------------- lexer
_FUNCS = {"sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "arcsin": sympy.asin, "arccos": sympy.acos,
          "arctan": sympy.atan, "sinh": sympy.sinh, "cosh": sympy.cosh, "tanh": sympy.tanh,
          "exp": sympy.exp, "ln": None, "log": None, "cot": sympy.cot, "sec": sympy.sec, "csc": sympy.csc}
_IGNORED_CMDS = {"left", "right", "displaystyle", ",", " ", "quad", "qquad", "big", "bigl", "bigr", "Big", "Bigl",
                 "Bigr"}
# latex2sympy2 rejects these spacing commands outright (e.g. "$-\!2$")
_REJECTED_CMDS = {"!", ";", ":", "$", "#", "&", "_"}
# commands and bare words that latex2sympy2's lexer turns into tokens no expression can continue with: the valid
# prefix before them is the value ("18\choose3" -> 18, "2triangles" -> 2 via the keyword "tr")
_STOP_CMDS = {"choose", "end"}
_STOP_WORDS = ("trace", "tr", "norm", "rank", "gcd", "lcm", "floor", "ceil", "eye", "diag", "rref")
_MUL_CMDS = {"cdot", "times", "ast"}
_NUMBER = re.compile(r"[0-9]+(?:,[0-9]{3})*(?:\.[0-9]+)?|\.[0-9]+|[0-9]+")
_DIGITS = frozenset("0123456789")  # not str.isdigit(): '²' is a digit there but not a number here
_CMD = re.compile(r"\\([a-zA-Z]+|.)")


def _tokenize(s: str) -> list[tuple[str, str]]:
    """Tokens as (kind, text); a lone '.' (not starting a number) ends the input like latex2sympy2's lexer."""
    toks: list[tuple[str, str]] = []
    i, n = 0, len(s)
    spaced = False
    while i < n:
        ch = s[i]
        if ch.isspace() or ch == "$" or ch == "~":
            i += 1
            spaced = True
            continue
        was_spaced, spaced = spaced, False
        if ch in _DIGITS or (ch == "." and i + 1 < n and s[i + 1] in _DIGITS):
            m = _NUMBER.match(s, i)
            text = m.group(0)
            # "1,23" is a list in latex2sympy2; only comma groups of exactly three digits join into one number
            if "," in text and i + len(text) < n and s[i + len(text)] in _DIGITS:
                text = text.split(",")[0]
            toks.append(("num", text))
            i += len(text)
            # "5." and "5.." : the dot after a number ends the input
            continue
        if ch == ".":
            break
        if ch == "\\":
            m = _CMD.match(s, i)
            if not m:
                raise MathParseError("dangling backslash")
            name = m.group(1)
            i = m.end()
            if name == "\\":
                continue  # LaTeX line break
            if name in _IGNORED_CMDS:
                continue
            if name in _REJECTED_CMDS:
                raise MathParseError(f"unsupported command \\{name}")
            if name in _STOP_CMDS:
                break
            if name in ("{", "}"):
                toks.append(("open" if name == "{" else "close", name))
                continue
            if name == "%":
                if was_spaced:
                    raise MathParseError("space before \\%")  # latex2sympy2 rejects "30 \\%"
                toks.append(("percent", "%"))
                continue
            toks.append(("cmd", name))
            continue
        if ch.isalpha() and ch.isascii():
            if s.startswith(_STOP_WORDS, i):
                break
            toks.append(("letter", ch))
        elif ch in "([{":
            toks.append(("open", ch))
        elif ch in ")]}":
            toks.append(("close", ch))
        elif ch in "+-*/:^_!=|,'":
            toks.append(("op", ch))
        else:
            raise MathParseError(f"unexpected character {ch!r}")
        i += 1
    return toks


# ----------------------------------------------------------------------------------------------- parser
class _Parser:
    """Recursive descent over the token list; builds sympy objects with evaluate=False."""

    def __init__(self, toks: list[tuple[str, str]]):
        self.toks, self.i = toks, 0

    def peek(self, k: int = 0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else ("eof", "")

    def take(self):
        t = self.peek()
        self.i += 1
        return t

    def expect(self, kind: str, text: str | None = None):
        t = self.take()
        if t[0] != kind or (text is not None and t[1] != text):
            raise MathParseError(f"expected {text or kind}, got {t[1]!r}")
        return t

    # top level: a relation or a prefix of one; trailing closers are ignored, a comma means a list
    def parse_top(self):
        lhs = self.additive()
        if self.peek() == ("op", "="):
            self.take()
            rhs = self.additive()
            if not isinstance(lhs, sympy.Symbol):
                raise MathParseError("equation (not a value)")
            lhs = rhs
        t = self.peek()
        if t[0] == "op" and t[1] == ",":
            raise MathParseError("list (not a single value)")
        if t[0] not in ("eof", "close"):
            raise MathParseError(f"unexpected {t[1]!r}")
        return lhs

    def additive(self):
        node = self.term()
        while self.peek()[0] == "op" and self.peek()[1] in "+-":
            op = self.take()[1]
            rhs = self.term()
            node = sympy.Add(node, rhs if op == "+" else sympy.Mul(-1, rhs, evaluate=False), evaluate=False)
        return node

    def _starts_primary(self, t) -> bool:
        kind, text = t
        if kind in ("num", "letter"):
            return True
        if kind == "open":
            return True
        if kind == "cmd":
            return text not in _MUL_CMDS and text not in ("div", "pm", "mp", "rfloor", "rceil")
        return False

    def term(self):
        node = self.unary()
        while True:
            t = self.peek()
            if (t[0] == "op" and t[1] in "*/:") or (t[0] == "cmd" and t[1] in _MUL_CMDS | {"div"}):
                self.take()
                rhs = self.unary()
                if t[1] in ("/", ":", "div"):
                    node = sympy.Mul(node, sympy.Pow(rhs, -1, evaluate=False), evaluate=False)
                else:
                    node = sympy.Mul(node, rhs, evaluate=False)
            elif self._starts_primary(t):
                node = sympy.Mul(node, self.postfix(), evaluate=False)  # implicit multiplication
            else:
                return node

    def unary(self):
        t = self.peek()
        if t[0] == "op" and t[1] in "+-":
            self.take()
            inner = self.unary()
            return inner if t[1] == "+" else sympy.Mul(-1, inner, evaluate=False)
        return self.postfix()

    def postfix(self):
        node = self.primary()
        while True:
            t = self.peek()
            if t == ("op", "!"):
                self.take()
                node = sympy.factorial(node, evaluate=False)
            elif t == ("op", "^"):
                self.take()
                node = _pow(node, self.script())
            elif t == ("op", "_"):
                self.take()
                sub = self.script()
                node = sympy.Symbol(f"{node}_{sub}")  # subscripted names are opaque symbols
            elif t == ("op", "'"):
                self.take()
                node = sympy.Symbol(f"{node}'")
            elif t[0] == "percent":
                self.take()
                node = sympy.Mul(node, sympy.Rational(1, 100), evaluate=False)
            else:
                return node

    def script(self):
        """Argument of ^ or _: a braced group, or a single token (a digit, letter or command)."""
        t = self.peek()
        if t[0] == "open" and t[1] == "{":
            return self.group("{", "}")
        if t[0] == "num":
            self.take()
            return _number(t[1])
        if t[0] == "op" and t[1] in "+-":
            return self.unary()
        return self.primary()

    def group(self, open_: str, close: str):
        self.expect("open", open_)
        node = self.additive()
        if self.peek() == ("op", "="):  # x=3 inside a group: keep latex2sympy2's 'value of rhs' only for symbols
            self.take()
            rhs = self.additive()
            if not isinstance(node, sympy.Symbol):
                raise MathParseError("equation in group")
            node = rhs
        self.expect("close", close)
        return node

    def primary(self):
        kind, text = self.peek()
        if kind == "num":
            self.take()
            return _number(text)
        if kind == "letter":
            self.take()
            return sympy.E if text == "e" else sympy.Symbol(text)
        if kind == "open":
            closer = {"(": ")", "[": "]", "{": "}"}[text]
            return self.group(text, closer)
        if kind == "op" and text == "|":
            self.take()
            node = self.additive()
            self.expect("op", "|")
            return sympy.Abs(node, evaluate=False)
        if kind == "cmd":
            self.take()
            return self.command(text)
        raise MathParseError(f"unexpected {text!r}")

    def braced(self):
        return self.group("{", "}")

    def command(self, name: str):
        if name == "pi":
            return sympy.pi
        if name == "infty":
            return sympy.oo
        if name in ("frac", "dfrac", "tfrac"):
            num, den = self.braced(), self.braced()
            return sympy.Mul(num, sympy.Pow(den, -1, evaluate=False), evaluate=False)
        if name == "binom":
            n, k = self.braced(), self.braced()
            return sympy.binomial(n, k)
        if name == "sqrt":
            if self.peek() == ("open", "["):
                self.take()
                root = self.additive()
                self.expect("close", "]")
                return sympy.Pow(self.braced(), sympy.Pow(root, -1), evaluate=False)
            return sympy.Pow(self.braced(), sympy.Rational(1, 2), evaluate=False)
        if name in ("lfloor", "lceil"):
            inner = self.additive()
            self.expect("cmd", "rfloor" if name == "lfloor" else "rceil")
            return (sympy.floor if name == "lfloor" else sympy.ceiling)(inner, evaluate=False)
        if name in _FUNCS:
            arg = self.postfix() if self.peek()[0] != "open" else self.primary()
            if name == "log":
                return sympy.log(arg, 10, evaluate=False)
            if name == "ln":
                return sympy.log(arg, evaluate=False)
            return _FUNCS[name](arg, evaluate=False)
        if name in ("text", "mathrm", "mbox", "textbf", "mathbf", "operatorname", "overline", "angle", "triangle"):
            if self.peek() == ("open", "{"):
                depth_text = self._raw_group()
                return sympy.Symbol(f"\\{name}{{{depth_text}}}")
            return sympy.Symbol(f"\\{name}")
        return sympy.Symbol(f"\\{name}")  # unknown command: an opaque name (fails numeric evaluation)

    def _raw_group(self) -> str:
        self.expect("open", "{")
        depth, parts = 1, []
        while depth:
            t = self.take()
            if t[0] == "eof":
                raise MathParseError("unbalanced braces")
            if t == ("open", "{"):
                depth += 1
            elif t == ("close", "}"):
                depth -= 1
                if depth == 0:
                    break
            parts.append(t[1])
        return "".join(parts)


def _number(text: str):
    """Decimals become exact rationals, as in latex2sympy2 ('1.50' -> 3/2, '3.0' -> 3)."""
    text = text.replace(",", "")
    if "." in text:
        return sympy.Rational(text)
    return sympy.Integer(int(text))


def _pow(base, exp):
    return sympy.Pow(base, exp, evaluate=False)


def parse_latex(s: str) -> sympy.Basic:
    """Parse the supported LaTeX subset into a sympy expression (no Python evaluation of the text)."""
    if not isinstance(s, str):
        raise MathParseError(f"expected str, got {type(s).__name__}")
    if len(s) > MAX_INPUT_CHARS:
        raise MathParseError("input too long")
    toks = _tokenize(s)
    if not toks:
        raise MathParseError("empty")
    return _Parser(toks).parse_top()


# ----------------------------------------------------------------------------------------------- evaluation
class NotANumber(ValueError):
    """The expression has no value under Python-math semantics (NameError/TypeError/ValueError officially)."""


_PY_FUNCS = {sympy.sin: math.sin, sympy.cos: math.cos, sympy.tan: math.tan, sympy.asin: math.asin,
             sympy.acos: math.acos, sympy.atan: math.atan, sympy.sinh: math.sinh, sympy.cosh: math.cosh,
             sympy.tanh: math.tanh, sympy.exp: math.exp, sympy.floor: math.floor}


_STRICT_FUNCS = {sympy.cot: lambda x: 1 / math.tan(x), sympy.sec: lambda x: 1 / math.cos(x),
                 sympy.csc: lambda x: 1 / math.sin(x)}


def python_value(expr) -> int | float:
    """Value of `expr` as Python `eval(str(expr))` with `from math import *` would give it, or NotANumber."""
    v = _pv(expr)
    if isinstance(v, complex) or not isinstance(v, (int, float)):
        raise NotANumber("not a real number")  # round() of a complex raises TypeError officially
    return v


def _pv(e, strict: bool = False):
    if isinstance(e, sympy.Integer):
        return int(e)
    if isinstance(e, sympy.Rational):
        return e.p / e.q  # printed as 'p/q': true division
    if isinstance(e, sympy.Float):
        return float(e)
    if e is sympy.pi:
        return math.pi
    if isinstance(e, sympy.Add):
        total = 0
        for a in e.args:
            total = total + _pv(a, strict)
        return total
    if isinstance(e, sympy.Mul):
        prod = 1
        for a in e.args:
            if isinstance(a, sympy.Pow) and a.exp == -1:
                prod = _div(prod, _pv(a.base))
            else:
                prod = prod * _pv(a, strict)
        return prod
    if isinstance(e, sympy.Pow):
        if e.base is sympy.E:  # printed as exp(x)
            return _call(math.exp, _pv(e.exp, strict))
        b, x = _pv(e.base, strict), _pv(e.exp, strict)
        if isinstance(b, int) and isinstance(x, int) and abs(b) > 1 and (
                x > _MAX_INT_EXPONENT or b.bit_length() * x > _MAX_RESULT_BITS):
            raise NotANumber("integer power too large")
        if isinstance(b, float) and isinstance(x, (int, float)) and abs(x) > 1e6:
            raise NotANumber("power too large")
        if e.exp == sympy.Rational(1, 2):  # printed as sqrt(x): math.sqrt, ValueError for negatives
            return _call(math.sqrt, b)
        return _powv(b, x)
    if isinstance(e, sympy.factorial):
        n = _pv(e.args[0], strict)
        if not isinstance(n, int) or n < 0 or n > _MAX_FACTORIAL:
            raise NotANumber("factorial argument")
        return math.factorial(n)
    if isinstance(e, sympy.log):
        if len(e.args) == 2:  # printed log(x, b)
            return _call(math.log, _pv(e.args[0], strict), _pv(e.args[1], strict))
        return _call(math.log, _pv(e.args[0], strict))
    func = getattr(e, "func", None)
    if strict:  # names the official `eval` lacks, but which are plain numbers mathematically
        if e is sympy.E:
            return math.e
        if isinstance(e, sympy.Abs):
            return abs(_pv(e.args[0], strict))
        if isinstance(e, sympy.ceiling):
            return _call(math.ceil, _pv(e.args[0], strict))
        if func in _STRICT_FUNCS:
            return _call(_STRICT_FUNCS[func], _pv(e.args[0], strict))
    if isinstance(e, sympy.binomial):
        raise NotANumber("binomial")
    if func in _PY_FUNCS and len(e.args) == 1:
        return _call(_PY_FUNCS[func], _pv(e.args[0], strict))
    # E alone, I, oo, zoo, nan, Abs, ceiling, cot/sec/csc, free symbols, relations, lists: names unknown to
    # Python's math module, or non-numbers
    raise NotANumber(f"no Python value for {type(e).__name__}")


def _div(a, b):
    if b == 0:
        raise NotANumber("division by zero")
    return a / b


def _powv(b, x):
    try:
        return b ** x
    except (ZeroDivisionError, OverflowError) as exc:
        raise NotANumber(str(exc)) from None


def _call(f, *args):
    try:
        return f(*args)
    except (ValueError, TypeError, OverflowError, ZeroDivisionError) as exc:
        raise NotANumber(str(exc)) from None


def py_round2(v: int | float) -> int | float:
    return round(v, 2)


def py_round2_equal(a: int | float, b: int | float) -> bool:
    return round(a, 2) == round(b, 2)


def py_str(v) -> str:
    return str(v)


# ----------------------------------------------------------------------------------------------- backends
def _latex2sympy2_parse(s: str):
    from latex2sympy2 import latex2sympy  # optional extra; builds sympy objects, no Python eval of the text

    return latex2sympy(s)


def official_value_unguarded(s: str, backend: str = "native") -> int | float | None:
    """`round`-able value the official `eval(str(latex2sympy(s)))` would give, or None (its `except`)."""
    try:
        expr = parse_latex(s) if backend == "native" else _latex2sympy2_parse(s)
        return python_value(expr)
    except (MathParseError, NotANumber, RecursionError):
        return None
    except Exception:  # noqa: BLE001 - latex2sympy2 raises bare Exception on syntax errors; sympy TypeErrors
        return None


def strict_value_unguarded(s: str) -> float | None:
    """Mathematical value for the strict profile: like the official value, but `e`, `|x|`, `\\lceil`, `\\cot`...
    are numbers too. Floats only (strict compares with a tolerance)."""
    try:
        v = _pv(parse_latex(s), strict=True)
    except Exception:  # noqa: BLE001 - any failure means "no value", never a crashed scorer
        return None
    if isinstance(v, complex) or not isinstance(v, (int, float)):
        return None
    try:
        return float(v)
    except OverflowError:
        return None


# ----------------------------------------------------------------------------------------------- worker + timeout
def _worker_main() -> None:
    """Worker loop: one JSON request per stdin line -> one JSON value per stdout line."""
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("op") == "strict":
            v = strict_value_unguarded(req["s"])
        else:
            v = official_value_unguarded(req["s"], req["backend"])
        sys.stdout.write(json.dumps(v) + "\n")
        sys.stdout.flush()


_PLAIN_NUMBER = re.compile(r"-?\d{1,15}(\.\d{1,15})?")


BACKENDS = ("native", "latex2sympy2")  # numeric parsers: own safe parser, or latex2sympy2 (optional extra)


class Evaluator:
    """Official-value evaluation in a worker process with a per-item time limit and a result cache.

    The worker is a plain `python -m pointcopy.eval.safe_math` subprocess speaking JSON lines (no
    multiprocessing, so callers' scripts need no `__main__` guard). A call that exceeds `timeout_s` kills the
    worker (a fresh one starts on the next call) and counts as None, the official `except` outcome.
    """

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, backend: str = "native"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown math backend {backend!r} (native|latex2sympy2)")
        if backend == "latex2sympy2":
            _latex2sympy2_parse("1")  # fail early with ImportError if the optional extra is missing
        self.timeout_s, self.backend = timeout_s, backend
        self._proc: subprocess.Popen | None = None
        self._cache: dict[str, int | float | None] = {}
        self.timeouts = 0

    def _start(self) -> None:
        src = str(Path(__file__).resolve().parents[2])  # works for editable and plain checkouts alike
        env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self._proc = subprocess.Popen([sys.executable, "-m", "pointcopy.eval.safe_math"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, encoding="utf-8", env=env, bufsize=1)

    def close(self) -> None:
        if self._proc is not None:
            proc, self._proc = self._proc, None
            proc.kill()
            proc.wait()
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def official_value(self, s: str) -> int | float | None:
        if s in self._cache:
            return self._cache[s]
        if len(s) > MAX_INPUT_CHARS:
            v = None
        elif _PLAIN_NUMBER.fullmatch(s) and self.backend == "native":
            v = official_value_unguarded(s)  # cannot hang: plain short numbers are evaluated in-process
        else:
            v = self._ask(s)
        self._cache[s] = v
        return v

    def strict_value(self, s: str) -> float | None:
        """`strict_value_unguarded` under the same worker, time limit and (separate) cache."""
        key = "\x00strict\x00" + s
        if key not in self._cache:
            self._cache[key] = None if len(s) > MAX_INPUT_CHARS else self._ask(s, op="strict")
        return self._cache[key]

    def _ask(self, s: str, op: str = "official"):
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        self._proc.stdin.write(json.dumps({"s": s, "backend": self.backend, "op": op}) + "\n")
        self._proc.stdin.flush()
        ready, _, _ = select.select([self._proc.stdout], [], [], self.timeout_s)
        if ready:
            line = self._proc.stdout.readline()
            if line:
                return json.loads(line)
        else:
            self.timeouts += 1
        self.close()  # timed out or the worker died: either way the official code would not have a value
        return None


@lru_cache(maxsize=None)
def default_evaluator() -> Evaluator:
    """Process-wide evaluator (one worker) for callers that do not manage their own."""
    return Evaluator()


if __name__ == "__main__":
    _worker_main()
