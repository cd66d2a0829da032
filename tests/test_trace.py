"""Tests for pointcopy.trace: parse/render round trip, errors with offsets, lenient parsing of model output."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pointcopy.trace import (
    Detect,
    DetectObject,
    ObjectRef,
    Region,
    Text,
    TraceSyntaxError,
    format_box,
    parse,
    parse_lenient,
    region_from_pixels,
    render,
)

DEMO = (
    'detect(query="vigor group", objects=["<obj3><region>[0.11, 0.21, 0.56, 0.33]'
    + "".join(f"<|copy_{k}|>" for k in range(50, 62))
    + '</region>"])'
)


def test_official_demo_output_parses():
    g = parse(DEMO)
    (d,) = g.nodes
    assert isinstance(d, Detect) and d.query == "vigor group" and d.quoted
    (o,) = g.objects
    assert (o.obj_id, o.query, o.box, o.copy_ids) == (3, "vigor group", (0.11, 0.21, 0.56, 0.33), tuple(range(50, 62)))
    assert o.key == "<obj3>"
    assert render(g) == DEMO


def test_multi_object_detect_and_mentions():
    t = (
        'We need both. detect(query="the two circles", objects=["<obj1><region>[0.00, 0.00, 0.50, 0.50]<|copy_0|></region>", '
        '"<obj2><region>[0.50, 0.50, 1.00, 1.00]<|copy_3|></region>"])\nSo <obj1> and <obj2> touch; '
        "look again: <obj1><region>[0.00, 0.00, 0.50, 0.50]<|copy_0|></region>."
    )
    g = parse(t, num_image_tokens=4)
    assert [o.obj_id for o in g.objects] == [1, 2]
    assert g.object(2).copy_ids == (3,) and g.object(2).query == "the two circles"
    assert g.copy_ids == [0, 3, 0]
    assert g.mentions == [1, 2, 1, 2, 1]
    assert len(g.regions) == 3
    assert render(g) == t
    with pytest.raises(KeyError):
        g.object(7)


def test_bare_entries_and_whitespace_variants_round_trip():
    t = "detect(query=\"tangent line AB\", objects=[<obj1>])"  # the project page form
    g = parse(t)
    assert g.nodes[0].quoted is False and g.objects[0].obj_id == 1
    assert render(g) == t
    loose = 'detect( query = "x" ,objects= [ "<obj1>" ,  "<obj2>" ] )'
    g = parse(loose)
    assert render(g) == loose  # reproduced verbatim
    assert render(g, canonical=True) == 'detect(query="x", objects=["<obj1>", "<obj2>"])'
    # A modified node renders canonically, not from stale source text.
    d2 = dataclasses.replace(g.nodes[0], query="y")
    assert render([d2]) == 'detect(query="y", objects=["<obj1>", "<obj2>"])'


def test_escaped_quote_in_query_kept_verbatim():
    t = r'detect(query="angle \"ABC\"", objects=["<obj1>"])'
    g = parse(t)
    assert g.nodes[0].query == r"angle \"ABC\""
    assert render(g) == t
    with pytest.raises(ValueError):
        render([Detect('bad " quote', (DetectObject(ObjectRef(1)),))])
    with pytest.raises(ValueError):
        render([Detect("trailing \\", (DetectObject(ObjectRef(1)),))])


def test_region_without_box_and_empty_region():
    t = "a <region><|copy_3|><|copy_4|></region> b <region>[0.10, 0.20, 0.10, 0.20]</region>"
    g = parse(t)
    assert g.regions[0] == Region(None, (3, 4))
    assert g.regions[1] == Region((0.1, 0.2, 0.1, 0.2), ())
    assert render(g) == t


def test_format_box_matches_normalize_bbox():
    # official: "[" + ", ".join(f"{v:.2f}") + "]" of x/w, y/h
    r = region_from_pixels((10, 20, 300, 150), (640, 480), [1, 2])
    assert render([r]) == "<region>[0.02, 0.04, 0.47, 0.31]<|copy_1|><|copy_2|></region>"
    assert format_box((0, 1, 0.125, 0.999)) == "[0.00, 1.00, 0.12, 1.00]"
    with pytest.raises(ValueError):
        format_box((0, 1))


@pytest.mark.parametrize(
    "text, reason, offset",
    [
        ('detect(query="x, objects=["<obj1>"])', "expected ',' after the query", 27),
        ('detect(query="x", objects=["<obj1>])', "object entry not closed", 27),
        ('detect(query="x", objects=["<obj1>"]', "detect call not closed", 36),
        ('detect(query="x", objects=["<obj1>"] and more', "expected ')'", 37),
        ('detect(query="x", objects=["<obj1>" "<obj2>"])', "expected ',' or ']'", 36),
        ('detect(query="x", objects=[])', "without objects", 27),
        ('detect(query="", objects=["<obj1>"])', "empty detect query", 13),
        ('detect(query="x", objects=["<obj1>", <obj2>])', "mixes quoted and bare", 37),
        ('detect(query="x", objects=["hello"])', "object entry must be", 28),
        ('detect(query="x", objects=["<obj1> hi"])', "unexpected text in object entry", 34),
        ('detect(objects=["<obj1>"])', "expected 'query='", 7),
        ("ok <region>[0.10, 0.20, 0.30, 0.40]<|copy_1|>", "region not closed", 3),
        ("ok <region>[0.10, 0.20, 0.30, 0.40]<|copy_1|> and on", "region not closed", 3),
        ("<region>[0.10, 0.20, 0.30, 0.40]<|copy_1|> x</region>", "unexpected text inside a region", 42),
        ("<region>[0.10, 0.20, 0.30<|copy_1|></region>", "region not closed (box", 0),
        ("<region>[0.1, 0.2, 0.3, 0.4]</region>", "bad box", 8),
        ("<region>[0.10, 0.20, 0.30]</region>", "bad box", 8),
        ("<region>[0.10,0.20,0.30,0.40]</region>", "bad box", 8),
        ("<region>[0.10, 0.20, 1.30, 0.40]</region>", "bad box: coordinates must lie in [0, 1]", 8),
        ("<region>[0.50, 0.20, 0.30, 0.40]</region>", "x0 > x1", 8),
        ("<region>[0.10, 0.20, 0.30, 0.40]<|copy_07|></region>", "leading zero", 32),
        ("x </region>", "without an open", 2),
        ("x <|copy_3|>", "outside a region", 2),
        ("<region><region></region></region>", "unexpected text inside a region", 8),
        ("see <obj01>", "leading zero", 4),
        ('detect(query="a", objects=["<obj1>", "<obj1>"])', "duplicate object id <obj1> (already listed at offset 27)", 37),
    ],
)
def test_malformed_traces_raise_with_offset(text, reason, offset):
    with pytest.raises(TraceSyntaxError) as ei:
        parse(text)
    e = ei.value
    assert isinstance(e, ValueError)
    assert reason in e.reason, e
    assert e.offset == offset, e
    assert f"offset {offset}" in str(e) and ">>>" in str(e)
    # lenient parsing reports the same problem and reproduces the text
    g = parse_lenient(text)
    assert any(reason in p.reason for p in g.problems), g.problems
    assert render(g) == text


def test_copy_id_range():
    t = "<region>[0.10, 0.20, 0.30, 0.40]<|copy_3|><|copy_4|></region>"
    parse(t, num_image_tokens=5)
    with pytest.raises(TraceSyntaxError, match=r"copy id 4 out of range: the sample has 4 image tokens at offset 42"):
        parse(t, num_image_tokens=4)
    g = parse_lenient(t, num_image_tokens=4)
    assert g.regions == [Region((0.1, 0.2, 0.3, 0.4), (3, 4))]  # kept, but reported
    assert len(g.problems) == 1


def test_lenient_cut_off_mid_region_recovers_object_and_query():
    text = "Now look.\n" + DEMO[: DEMO.index("<|copy_55|>") + 5]  # cut inside a copy token
    g = parse_lenient(text)
    assert render(g) == text
    (o,) = g.objects
    assert (o.obj_id, o.query, o.copy_ids) == (3, "vigor group", (50, 51, 52, 53, 54))
    assert g.regions[0].closed is False
    reasons = [p.reason for p in g.problems]
    assert any("region not closed" in r for r in reasons)
    with pytest.raises(TraceSyntaxError):
        parse(text)


def test_lenient_keeps_good_parts_around_bad_ones():
    text = (
        'detect(query="a", objects=["<obj1><region>[0.00, 0.00, 0.10, 0.10]<|copy_0|></region>"]) then '
        "<region>[9.99]</region> and </region> and <obj1> and "
        'detect(query="b", objects=["<obj2><region>[0.50, 0.50, 0.60, 0.60]<|copy_9|></region>"])'
    )
    g = parse_lenient(text)
    assert render(g) == text
    assert [o.obj_id for o in g.objects] == [1, 2]
    assert g.copy_ids == [0, 9]
    assert [p.offset for p in g.problems] == sorted(p.offset for p in g.problems)
    assert {"bad box" in p.reason or "without an open" in p.reason for p in g.problems} == {True}


# ---------------------------------------------------------------- property tests

SPECIAL = re.compile(r"detect\(|<obj\d+>|</?region>|<\|copy_\d+\|>")
plain = st.text(alphabet=st.sampled_from(list("abcdetXYZ019 .,:;=?!()[]\"'>\n")), max_size=20)
unit = st.integers(0, 100).map(lambda v: v / 100)


@st.composite
def boxes(draw):
    x0, x1 = sorted([draw(unit), draw(unit)])
    y0, y1 = sorted([draw(unit), draw(unit)])
    return (x0, y0, x1, y1)


regions = st.builds(
    Region,
    st.one_of(st.none(), boxes()),
    st.lists(st.integers(0, 2000), max_size=6).map(tuple),
)
queries = st.text(alphabet=st.sampled_from(list("abc XYZ019,()[]<>=")), min_size=1, max_size=15).map(
    lambda q: q.replace("detect(", "x")
)


@st.composite
def detects(draw, next_id):
    n = draw(st.integers(1, 3))
    quoted = draw(st.booleans())
    entries = []
    for _ in range(n):
        with_ref = draw(st.booleans())
        region = draw(st.one_of(st.none(), regions)) if with_ref else draw(regions)
        entries.append(DetectObject(ObjectRef(next_id()) if with_ref else None, region))
    return Detect(draw(queries), tuple(entries), quoted=quoted)


@st.composite
def traces(draw):
    counter = iter(range(1, 10_000))
    nodes = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["text", "ref", "region", "detect"]))
        if kind == "text":
            nodes.append(Text(draw(plain)))
        elif kind == "ref":
            nodes.append(ObjectRef(draw(st.integers(0, 30))))
        elif kind == "region":
            nodes.append(draw(regions))
        else:
            nodes.append(draw(detects(lambda: next(counter))))
    return nodes


def _normalise(nodes):
    """Merge adjacent texts and drop empty ones, as the parser produces them."""
    out = []
    for n in nodes:
        if isinstance(n, Text):
            if not n.text:
                continue
            if out and isinstance(out[-1], Text):
                out[-1] = Text(out[-1].text + n.text)
                continue
        out.append(n)
    return out


@settings(max_examples=400, deadline=None)
@given(traces())
def test_round_trip_render_parse(nodes):
    nodes = _normalise(nodes)
    for n in nodes:  # plain text must not spell markup by accident
        if isinstance(n, Text):
            assume(SPECIAL.search(n.text) is None)
    text = render(nodes)
    assume(SPECIAL.search("".join(n.text for n in nodes if isinstance(n, Text))) is None)
    g = parse(text)
    assert render(g) == text
    assert g.nodes == nodes
    assert parse_lenient(text).nodes == nodes and parse_lenient(text).problems == []


fragments = st.sampled_from(
    [
        "detect(", 'query="', "query=", '"', ", ", "objects=[", "]", ")", "<obj1>", "<obj2>", "<region>",
        "</region>", "[0.10, 0.20, 0.30, 0.40]", "[0.1, 2", "<|copy_5|>", "<|copy_", "<|copy_07|>", "x", "\n", "\\",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(fragments, plain), max_size=25).map("".join), st.integers(0, 10))
def test_lenient_is_lossless_and_never_raises(text, n_tokens):
    g = parse_lenient(text, num_image_tokens=n_tokens)
    assert render(g) == text
    for p in g.problems:
        assert 0 <= p.offset <= len(text)
    if not g.problems:  # lenient without problems means strict accepts it too, identically
        assert parse(text, num_image_tokens=n_tokens).nodes == g.nodes
    else:
        with pytest.raises(TraceSyntaxError):
            parse(text, num_image_tokens=n_tokens)


@settings(max_examples=200, deadline=None)
@given(traces(), st.data())
def test_lenient_on_truncated_well_formed_traces(nodes, data):
    text = render(_normalise(nodes))
    cut = data.draw(st.integers(0, len(text)))
    g = parse_lenient(text[:cut])
    assert render(g) == text[:cut]
    # every copy id found in the prefix was in the full trace's regions, in order
    full_ids = parse_lenient(text).copy_ids
    assert g.copy_ids == full_ids[: len(g.copy_ids)]


def test_later_detect_may_relist_declared_objects():
    """Re-detection under a new query (the shapes world's filter steps) is legal; objects keep their first query."""
    text = ('detect(query="object", objects=["<obj1>"]) red cube\n'
            'detect(query="red things", objects=["<obj1>", "<obj2>"])')
    parsed = parse(text)
    assert parsed.render() == text
    assert [(o.obj_id, o.query) for o in parsed.objects] == [(1, "object"), (2, "red things")]
