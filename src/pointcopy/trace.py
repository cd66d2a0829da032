"""The grounded-trace language of v1 (PAPER.md §2): parse and render, pure Python.

A grounded trace is ordinary reasoning text with three kinds of markup::

    detect(query="tangent line AB", objects=["<obj1><region>[0.11, 0.21, 0.56, 0.33]<|copy_50|><|copy_51|></region>"])
    ... since <obj1> is tangent to ...
    ... <region>[0.11, 0.21, 0.56, 0.33]<|copy_50|><|copy_51|></region> ...

* ``detect(query="...", objects=[ENTRY, ...])`` declares objects. An entry is ``<objN>`` and/or a region, either
  quoted (``"<obj1>"``, the data format) or bare (``<obj1>``, as on the project page). Several entries are
  allowed (the official parser handled only one).
* ``<objN>`` mentions an object (``N`` without leading zeros).
* ``<region>[x0, y0, x1, y1]<|copy_k|>...</region>``: a box normalised to [0, 1] by the image size, two
  decimals, ``", "``-separated (official ``normalize_bbox``), then pointer tokens; ``k`` is the copy *slot*
  (0-based over the sample's image tokens). The box text may be absent (``<region><|copy_3|></region>``).

The AST is a flat list of nodes (:class:`Text`, :class:`ObjectRef`, :class:`Region`, :class:`Detect`) wrapped in
a :class:`GroundedTrace`. ``render(parse(t)) == t`` for every text ``parse`` accepts; whitespace variants inside
``detect(...)`` are accepted and reproduced verbatim, and a node built or modified in code renders canonically.

:func:`parse` is strict (raises :class:`TraceSyntaxError` with the character offset and an excerpt).
:func:`parse_lenient` is for model output: it never raises, records :class:`Problem` s, and is lossless
(``render(parse_lenient(t)) == t`` for *any* string): a malformed construct becomes text and parsing resumes
right after its opening token, so the objects and regions inside a cut-off ``detect(`` are still found; a
region cut off by the end of the text becomes ``Region(closed=False)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence, Union

__all__ = [
    "TraceSyntaxError",
    "Problem",
    "Text",
    "ObjectRef",
    "Region",
    "DetectObject",
    "Detect",
    "Node",
    "GroundedObject",
    "GroundedTrace",
    "parse",
    "parse_lenient",
    "render",
    "format_box",
    "format_copy",
    "region_from_pixels",
]

Box = tuple[float, float, float, float]

REGION_OPEN = "<region>"
REGION_CLOSE = "</region>"

# Top-level tokens. ``detect(`` has no word-boundary check on purpose: it is the DSL keyword, and a malformed
# call should be reported rather than silently read as prose.
_SPECIAL = re.compile(r"detect\(|<obj\d+>|</?region>|<\|copy_\d+\|>")
_OBJ = re.compile(r"<obj(\d+)>")
_COPY = re.compile(r"<\|copy_(\d+)\|>")
_BOX_NUM = re.compile(r"\d\.\d\d\Z")
_WS = re.compile(r"\s*")
_PARTIAL_COPY_AT_END = re.compile(r"<(\|(c(o(p(y(_(\d+(\|)?)?)?)?)?)?)?)?\Z")


class TraceSyntaxError(ValueError):
    """A malformed grounded trace. ``offset`` is the character offset in the parsed text, ``reason`` the cause."""

    def __init__(self, reason: str, offset: int, text: str):
        self.reason = reason
        self.offset = offset
        self.excerpt = _excerpt(text, offset)
        super().__init__(f"{reason} at offset {offset}: {self.excerpt}")


@dataclass(frozen=True)
class Problem:
    """One issue found by :func:`parse_lenient` (same fields as :class:`TraceSyntaxError`)."""

    offset: int
    reason: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.reason} at offset {self.offset}: {self.excerpt}"


def _excerpt(text: str, offset: int, width: int = 24) -> str:
    lo, hi = max(0, offset - width), min(len(text), offset + width)
    return ("..." if lo else "") + repr(text[lo:offset]) + " >>> " + repr(text[offset:hi]) + ("..." if hi < len(text) else "")


# ---------------------------------------------------------------- AST


@dataclass(frozen=True)
class Text:
    """Plain text (no markup)."""

    text: str


@dataclass(frozen=True)
class ObjectRef:
    """``<objN>``: a mention of object ``obj_id``."""

    obj_id: int

    @property
    def key(self) -> str:
        return f"<obj{self.obj_id}>"


@dataclass(frozen=True)
class Region:
    """``<region>[box]<|copy_k|>...</region>``.

    Attributes:
        box: normalised ``(x0, y0, x1, y1)`` in [0, 1] (as rendered: two decimals), or ``None`` if absent.
        copy_ids: copy slots ``k`` in order.
        closed: ``False`` only for a region cut off by the end of the text (lenient parsing).
    """

    box: Box | None
    copy_ids: tuple[int, ...] = ()
    closed: bool = True


@dataclass(frozen=True)
class DetectObject:
    """One entry of a ``detect`` objects list: ``<objN>`` and/or a region (at least one of them)."""

    ref: ObjectRef | None
    region: Region | None = None


@dataclass(frozen=True)
class Detect:
    """``detect(query="...", objects=[...])``.

    Attributes:
        query: the text between the quotes, verbatim (backslash escapes are kept, not decoded).
        objects: the entries.
        quoted: entries written as ``"..."`` (data format) rather than bare.
    """

    query: str
    objects: tuple[DetectObject, ...]
    quoted: bool = True
    # Exact source text when it differs from the canonical rendering (whitespace variants). init=False so that
    # dataclasses.replace() drops it and a modified node renders canonically instead of from stale source.
    _source: str | None = field(default=None, init=False, compare=False, repr=False)


Node = Union[Text, ObjectRef, Region, Detect]


# ---------------------------------------------------------------- rendering


def format_box(box: Sequence[float]) -> str:
    """``[x0, y0, x1, y1]`` with two decimals, ``", "``-separated (official ``normalize_bbox`` formatting)."""
    if len(box) != 4:
        raise ValueError(f"a box has 4 numbers, got {len(box)}: {box!r}")
    return "[" + ", ".join(f"{float(v):.2f}" for v in box) + "]"


def format_copy(k: int) -> str:
    """The pointer token text of copy slot ``k``."""
    return f"<|copy_{int(k)}|>"


def region_from_pixels(box_px: Sequence[float], image_size: tuple[int, int], copy_ids: Iterable[int]) -> Region:
    """Region whose box text is ``box_px`` normalised by ``image_size = (width, height)`` (no clipping)."""
    w, h = image_size
    x0, y0, x1, y1 = box_px
    return Region((x0 / w, y0 / h, x1 / w, y1 / h), tuple(int(k) for k in copy_ids))


def _render_region(r: Region) -> str:
    box = format_box(r.box) if r.box is not None else ""
    return REGION_OPEN + box + "".join(format_copy(k) for k in r.copy_ids) + (REGION_CLOSE if r.closed else "")


def _render_entry(e: DetectObject, quoted: bool) -> str:
    body = (e.ref.key if e.ref is not None else "") + (_render_region(e.region) if e.region is not None else "")
    return f'"{body}"' if quoted else body


def _render_detect(d: Detect, canonical: bool) -> str:
    if d._source is not None and not canonical:
        return d._source
    if not _query_renderable(d.query):
        raise ValueError(f"detect query has an unescaped '\"' or ends in a lone backslash: {d.query!r}")
    entries = ", ".join(_render_entry(e, d.quoted) for e in d.objects)
    return f'detect(query="{d.query}", objects=[{entries}])'


def render(nodes: "GroundedTrace | Iterable[Node]", *, canonical: bool = False) -> str:
    """Text of a trace. ``canonical=True`` also normalises whitespace inside parsed ``detect`` calls."""
    if isinstance(nodes, GroundedTrace):
        nodes = nodes.nodes
    out = []
    for n in nodes:
        if isinstance(n, Text):
            out.append(n.text)
        elif isinstance(n, ObjectRef):
            out.append(n.key)
        elif isinstance(n, Region):
            out.append(_render_region(n))
        elif isinstance(n, Detect):
            out.append(_render_detect(n, canonical))
        else:
            raise TypeError(f"not a trace node: {n!r}")
    return "".join(out)


# ---------------------------------------------------------------- parsing


class _Recover(Exception):
    def __init__(self, offset: int, reason: str):
        self.offset, self.reason = offset, reason


def _scan_string(text: str, pos: int) -> int:
    """From ``pos`` (just after an opening quote) to the closing quote; a backslash escapes the next char.

    Returns the index of the closing quote, or -1 if there is none.
    """
    i, n = pos, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i
        i += 1
    return -1


def _query_renderable(query: str) -> bool:
    """True if ``'"' + query + '"'`` scans back as exactly ``query``."""
    return _scan_string(query + '"', 0) == len(query)


class _Parser:
    def __init__(self, text: str, strict: bool, num_image_tokens: int | None):
        self.text = text
        self.strict = strict
        self.num_image_tokens = num_image_tokens
        self.problems: list[Problem] = []
        self.declared: dict[int, int] = {}  # obj id -> offset of its detect entry
        self.partial_queries: list[tuple[int, str]] = []  # (offset, query) of detect calls that failed late
        self._query: tuple[int, str] | None = None

    # -- errors
    def fail(self, offset: int, reason: str):
        if self.strict:
            raise TraceSyntaxError(reason, offset, self.text)
        raise _Recover(offset, reason)

    def note(self, offset: int, reason: str) -> None:
        """A problem that does not stop the construct from being kept (lenient) / raises (strict)."""
        if self.strict:
            raise TraceSyntaxError(reason, offset, self.text)
        self.problems.append(Problem(offset, reason, _excerpt(self.text, offset)))

    # -- top level
    def parse(self) -> list[Node]:
        text, n, pos = self.text, len(self.text), 0
        nodes: list[Node] = []

        def add_text(s: str) -> None:
            if not s:
                return
            if nodes and isinstance(nodes[-1], Text):
                nodes[-1] = Text(nodes[-1].text + s)
            else:
                nodes.append(Text(s))

        while pos < n:
            m = _SPECIAL.search(text, pos)
            if m is None:
                add_text(text[pos:])
                break
            add_text(text[pos : m.start()])
            tok, start = m.group(), m.start()
            try:
                if tok == "detect(":
                    self._query = None
                    node, end = self.detect(start)
                elif tok.startswith("<obj"):
                    node, end = self.obj_ref(start)
                elif tok == REGION_OPEN:
                    node, end = self.region(start, limit=n)
                elif tok == REGION_CLOSE:
                    self.fail(start, "'</region>' without an open '<region>'")
                else:
                    self.fail(start, f"copy token {tok} outside a region")
            except _Recover as r:
                self.problems.append(Problem(r.offset, r.reason, _excerpt(text, r.offset)))
                if tok == "detect(" and self._query is not None:
                    self.partial_queries.append(self._query)
                # Keep the opening token as text and resume right after it, so well-formed parts inside a
                # broken construct (e.g. a cut-off detect call) are still found.
                add_text(tok)
                pos = m.end()
                continue
            nodes.append(node)
            pos = end
        return nodes

    def obj_ref(self, pos: int) -> tuple[ObjectRef, int]:
        m = _OBJ.match(self.text, pos)
        assert m is not None
        digits = m.group(1)
        if len(digits) > 1 and digits[0] == "0":
            self.fail(pos, f"object id with leading zero: {m.group()}")
        return ObjectRef(int(digits)), m.end()

    # -- regions
    def region(self, pos: int, limit: int) -> tuple[Region, int]:
        """Parse ``<region>...</region>`` starting at ``pos``; nothing may go past ``limit``."""
        text = self.text
        i = pos + len(REGION_OPEN)
        box: Box | None = None
        if i < limit and text[i] == "[":
            close = text.find("]", i, limit)
            if close < 0:
                self.fail(pos, "region not closed (box '[' without ']')")
            box = self.box(i, close)
            i = close + 1
        copies: list[int] = []
        while True:
            m = _COPY.match(text, i)
            if m is None or m.end() > limit:
                break
            k_text = m.group(1)
            if len(k_text) > 1 and k_text[0] == "0":
                self.fail(i, f"copy id with leading zero: {m.group()}")
            k = int(k_text)
            if self.num_image_tokens is not None and k >= self.num_image_tokens:
                self.note(i, f"copy id {k} out of range: the sample has {self.num_image_tokens} image tokens")
            copies.append(k)
            i = m.end()
        if text.startswith(REGION_CLOSE, i) and i + len(REGION_CLOSE) <= limit:
            return Region(box, tuple(copies)), i + len(REGION_CLOSE)
        rest = text[i:limit]
        truncated = limit == len(text) and (REGION_CLOSE.startswith(rest) or _PARTIAL_COPY_AT_END.match(rest))
        if truncated and not self.strict:
            self.note(pos, "region not closed (text ends inside it)")
            return Region(box, tuple(copies), closed=False), i
        if truncated or text.find(REGION_CLOSE, i, limit) < 0:
            self.fail(pos, "region not closed")
        self.fail(i, "unexpected text inside a region (only a box and copy tokens are allowed)")
        raise AssertionError("unreachable")

    def box(self, start: int, close: int) -> Box:
        """Parse ``[a, b, c, d]`` between ``start`` ('[') and ``close`` (']')."""
        parts = self.text[start + 1 : close].split(", ")
        if len(parts) != 4 or not all(_BOX_NUM.match(p) for p in parts):
            self.fail(start, "bad box: expected [x0, y0, x1, y1] with two decimals, ', '-separated")
        x0, y0, x1, y1 = (float(p) for p in parts)
        if not all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
            self.fail(start, "bad box: coordinates must lie in [0, 1]")
        if x0 > x1 or y0 > y1:
            self.fail(start, "bad box: x0 > x1 or y0 > y1")
        return x0, y0, x1, y1

    # -- detect calls
    def ws(self, i: int) -> int:
        return _WS.match(self.text, i).end()

    def expect(self, i: int, lit: str, what: str) -> int:
        if not self.text.startswith(lit, i):
            if i >= len(self.text):
                self.fail(i, f"detect call not closed (text ends where {what} was expected)")
            self.fail(i, f"expected {what} in detect call")
        return i + len(lit)

    def detect(self, pos: int) -> tuple[Detect, int]:
        text = self.text
        i = self.ws(pos + len("detect("))
        i = self.ws(self.expect(i, "query", "'query='"))
        i = self.ws(self.expect(i, "=", "'=' after 'query'"))
        qstart = self.expect(i, '"', "a quoted query string")
        qend = _scan_string(text, qstart)
        if qend < 0:
            self.fail(i, "unbalanced quote: query string not closed")
        query = text[qstart:qend]
        if not query:
            self.fail(i, "empty detect query")
        self._query = (pos, query)
        i = self.ws(qend + 1)
        i = self.ws(self.expect(i, ",", "',' after the query"))
        i = self.ws(self.expect(i, "objects", "'objects='"))
        i = self.ws(self.expect(i, "=", "'=' after 'objects'"))
        i = self.ws(self.expect(i, "[", "'[' opening the objects list"))
        entries: list[tuple[int, DetectObject]] = []
        quoted: bool | None = None
        while True:
            if text.startswith("]", i):
                if not entries:
                    self.fail(i, "detect call without objects")
                break
            estart = i
            this_quoted = text.startswith('"', i)
            if quoted is not None and this_quoted != quoted:
                self.fail(i, "objects list mixes quoted and bare entries")
            quoted = this_quoted
            if this_quoted:
                close = text.find('"', i + 1)
                if close < 0:
                    self.fail(i, "unbalanced quote: object entry not closed")
                entry, end = self.entry(i + 1, close)
                if end != close:
                    self.fail(end, "unexpected text in object entry (expected '<objN>' and/or a region)")
                i = close + 1
            else:
                entry, i = self.entry(i, len(text))
            entries.append((estart, entry))
            i = self.ws(i)
            if text.startswith(",", i):
                i = self.ws(i + 1)
                continue
            if text.startswith("]", i):
                break
            if i >= len(text):
                self.fail(i, "detect call not closed (unbalanced '[')")
            self.fail(i, "expected ',' or ']' in the objects list")
        i = self.ws(i + 1)
        end = self.expect(i, ")", "')' closing the detect call")
        # An id listed twice in one call is malformed. A later call may list an object declared earlier: that is
        # a re-detection under a new query (e.g. "red things" -> the <obj1>, <obj4> found while enumerating).
        in_call: dict[int, int] = {}
        for estart, e in entries:
            if e.ref is None:
                continue
            prev = in_call.get(e.ref.obj_id)
            if prev is not None:
                self.note(estart, f"duplicate object id {e.ref.key} (already listed at offset {prev})")
            else:
                in_call[e.ref.obj_id] = estart
                self.declared.setdefault(e.ref.obj_id, estart)
        node = Detect(query, tuple(e for _, e in entries), quoted=bool(quoted))
        if _render_detect(node, canonical=True) != text[pos:end]:
            object.__setattr__(node, "_source", text[pos:end])
        return node, end

    def entry(self, i: int, limit: int) -> tuple[DetectObject, int]:
        text = self.text
        ref = None
        m = _OBJ.match(text, i)
        if m is not None and m.end() <= limit:
            ref, i = self.obj_ref(i)
        region = None
        if text.startswith(REGION_OPEN, i) and i + len(REGION_OPEN) <= limit:
            region, i = self.region(i, limit)
            if not region.closed:  # a truncated region cannot sit inside a well-formed detect call
                self.fail(i, "detect call not closed (text ends inside a region)")
        if ref is None and region is None:
            self.fail(i, "object entry must be '<objN>' and/or a region")
        return DetectObject(ref, region), i


def parse(text: str, *, num_image_tokens: int | None = None) -> "GroundedTrace":
    """Strict parse. Raises :class:`TraceSyntaxError` (a ``ValueError``) on the first problem.

    Args:
        text: the trace.
        num_image_tokens: if given, copy ids must be ``< num_image_tokens``.
    Errors: unbalanced quotes / brackets, region without close, stray ``</region>`` or copy token, bad box,
    copy id out of range, an object id listed twice in one ``detect`` call, malformed ``detect`` call.
    """
    p = _Parser(text, strict=True, num_image_tokens=num_image_tokens)
    return GroundedTrace(p.parse(), [])


def parse_lenient(text: str, *, num_image_tokens: int | None = None) -> "GroundedTrace":
    """Parse what is well formed, collect the rest in ``.problems``; never raises, always lossless."""
    p = _Parser(text, strict=False, num_image_tokens=num_image_tokens)
    nodes = p.parse()
    # A construct that failed late may have noted a problem before its inside was re-parsed as text: dedupe.
    problems = sorted({(q.offset, q.reason): q for q in p.problems}.values(), key=lambda q: q.offset)
    return GroundedTrace(nodes, problems, p.partial_queries)


# ---------------------------------------------------------------- views


@dataclass(frozen=True)
class GroundedObject:
    """An object of a trace: its id, the query that detected it, its box and copy slots (if any)."""

    obj_id: int
    query: str | None
    box: Box | None
    copy_ids: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"<obj{self.obj_id}>"


@dataclass
class GroundedTrace:
    """A parsed trace.

    Attributes:
        nodes: the flat AST.
        problems: what lenient parsing found wrong (empty for strict parsing).
        partial_queries: ``(offset, query)`` of ``detect`` calls that were kept as text because they broke
            after their query (typically generation cut off inside the objects list); used by :attr:`objects`.
    """

    nodes: list[Node]
    problems: list[Problem] = field(default_factory=list)
    partial_queries: list[tuple[int, str]] = field(default_factory=list)

    def render(self, *, canonical: bool = False) -> str:
        return render(self.nodes, canonical=canonical)

    @property
    def objects(self) -> list[GroundedObject]:
        """Objects in order of first appearance.

        Declared by a ``detect`` entry (query = its query, box/copies = the entry's region); or, for model
        output whose ``detect`` call broke (lenient parsing), an undeclared ``<objN>`` immediately followed by a
        region. Its query is that of the broken call it sits in (the last partial query before it on the same
        line), else ``None``. An object declared without a region has ``box=None`` and no copies. A duplicate
        declaration (lenient parsing) keeps the first.
        """
        found: dict[int, GroundedObject] = {}
        nodes = self.nodes
        full = self.render() if self.partial_queries else ""
        offset = 0
        for idx, n in enumerate(nodes):
            here = offset
            if self.partial_queries:
                offset += len(render([n]))
            if isinstance(n, Detect):
                for e in n.objects:
                    if e.ref is not None and e.ref.obj_id not in found:
                        r = e.region
                        found[e.ref.obj_id] = GroundedObject(
                            e.ref.obj_id, n.query, r.box if r else None, r.copy_ids if r else ()
                        )
            elif isinstance(n, ObjectRef) and n.obj_id not in found:
                nxt = nodes[idx + 1] if idx + 1 < len(nodes) else None
                if isinstance(nxt, Region):
                    query = None
                    for q_off, q in self.partial_queries:
                        if q_off < here and "\n" not in full[q_off:here]:
                            query = q
                    found[n.obj_id] = GroundedObject(n.obj_id, query, nxt.box, nxt.copy_ids)
        return list(found.values())

    def object(self, obj_id: int) -> GroundedObject:
        """The object with id ``obj_id``; ``KeyError`` if the trace has none."""
        for o in self.objects:
            if o.obj_id == obj_id:
                return o
        raise KeyError(f"<obj{obj_id}> not in trace")

    @property
    def regions(self) -> list[Region]:
        """Every region in text order (top-level and inside ``detect`` entries)."""
        out: list[Region] = []
        for n in self.nodes:
            if isinstance(n, Region):
                out.append(n)
            elif isinstance(n, Detect):
                out.extend(e.region for e in n.objects if e.region is not None)
        return out

    @property
    def copy_ids(self) -> list[int]:
        """All copy slots in text order."""
        return [k for r in self.regions for k in r.copy_ids]

    @property
    def mentions(self) -> list[int]:
        """Object ids of every ``<objN>`` in text order, including the declarations in ``detect`` entries."""
        out: list[int] = []
        for n in self.nodes:
            if isinstance(n, ObjectRef):
                out.append(n.obj_id)
            elif isinstance(n, Detect):
                out.extend(e.ref.obj_id for e in n.objects if e.ref is not None)
        return out
