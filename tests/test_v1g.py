"""Tests for pointcopy.data.v1g: reading (JSONL/JSON/parquet/iterables), validation, writing, expansion."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from pointcopy import geometry
from pointcopy.data import v1g
from pointcopy.data.v1g import (
    BadRecord,
    V1GError,
    V1GRecord,
    expand_regions,
    iter_v1g,
    read_v1g,
    record_from_row,
    training_view,
    validation_errors,
    write_v1g,
)
from pointcopy.geometry import MergedGrid
from pointcopy.layout import QWEN2_5_VL, SlotMap
from pointcopy.trace import parse

TRACE = 'detect(query="red square", objects=["<obj1>"])\ndetect(query="blue bar", objects=["<obj2>"])\nSo <obj1> is left of <obj2>.'


def _png(size=(200, 120), color=(200, 30, 30)) -> Image.Image:
    img = Image.new("RGB", size, (255, 255, 255))
    img.paste(Image.new("RGB", (40, 40), color), (10, 20))
    return img


def _row(rid, size=(200, 120), img=None, **over):
    row = {
        "id": rid,
        "image": img if img is not None else _png(size),
        "conversations": [
            {"from": "human", "value": "<image>\nWhich is left?"},
            {"from": "gpt", "value": TRACE},
        ],
        "regions": json.dumps({"<obj1>": [10, 20, 50, 60], "<obj2>": [100, 0, 200, 120]}),
        "image_size": list(size),
        "num_tokens": 77,
    }
    row.update(over)
    return row


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- round trips through files


def test_jsonl_write_read_round_trip(tmp_path):
    recs = [record_from_row(_row(i, size=(200 + 10 * i, 120))) for i in range(3)]
    out = tmp_path / "out" / "v1g.jsonl"
    assert write_v1g(recs, out) == 3
    lines = out.read_text().splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert first["image"] == "images/0.png" and isinstance(first["regions"], str)  # released layout
    assert set(first) == {"id", "image", "conversations", "regions", "image_size", "num_tokens"}
    res = read_v1g(out, check_image=True)
    assert res.bad == []
    assert [r.id for r in res.records] == [0, 1, 2]
    for a, b in zip(recs, res.records):
        assert (a.conversations, a.regions, a.image_size, a.num_tokens) == (b.conversations, b.regions, b.image_size, b.num_tokens)
        assert b.image == out.parent / "images" / f"{a.id}.png"
        with Image.open(b.image) as img:
            assert img.format == "PNG" and img.size == a.image_size
    assert res.records[1].question == "Which is left?"
    assert res.records[1].trace == TRACE


def test_json_list_with_relative_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    _png().save(tmp_path / "imgs" / "a.png")
    (tmp_path / "data.json").write_text(json.dumps([_row("a", img="imgs/a.png")]))
    res = read_v1g(tmp_path / "data.json", strict=True, check_image=True)
    assert res.records[0].image == tmp_path / "imgs" / "a.png"


def test_parquet_with_embedded_images(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = []
    for i in range(4):
        r = _row(f"s{i}")
        r["image"] = {"bytes": _png_bytes(_png(color=(i * 50, 0, 0))), "path": f"s{i}.png"}
        rows.append(r)
    rows[2]["image_size"] = [201, 120]  # disagrees with the embedded image
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
            ("regions", pa.string()),
            ("image_size", pa.list_(pa.int64())),
            ("num_tokens", pa.int64()),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "train-00000.parquet")
    res = read_v1g(tmp_path, check_image=True)  # a directory of shards
    assert [r.id for r in res.records] == ["s0", "s1", "s3"]
    assert [(b.id, b.field) for b in res.bad] == [("s2", "image")]
    assert "201x120" in res.bad[0].reason
    rec = res.records[1]
    assert isinstance(rec.image, bytes)
    assert rec.open_image().getpixel((20, 30)) == (50, 0, 0)
    # Writing keeps PNG bytes exactly.
    write_v1g(res.records, tmp_path / "export" / "v1g.jsonl")
    assert (tmp_path / "export" / "images" / "s1.png").read_bytes() == rows[1]["image"]["bytes"]


def test_iterable_of_rows_like_a_datasets_dataset(tmp_path):
    rows = [_row(1), _row(2, conversations=[{"from": "human", "value": "<image>\nq"}])]
    res = read_v1g(rows, check_image=True)
    assert [r.id for r in res.records] == [1]
    assert res.bad[0].id == 2 and res.bad[0].field == "conversations"


def test_real_datasets_dataset_if_installed(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [_row(i) for i in range(2)]
    for r in rows:
        r["image"] = _png_bytes(r["image"])
    ds = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    res = read_v1g(ds, strict=True, check_image=True)
    assert len(res.records) == 2


# ---------------------------------------------------------------- validation


def _errors(row, **kw):
    try:
        rec = record_from_row(row, index=5)
    except V1GError as e:
        return [e]
    return validation_errors(rec, **kw)


@pytest.mark.parametrize(
    "over, field, snippet",
    [
        ({"image": None}, "image", "missing"),
        ({"regions": None}, "regions", "missing"),
        ({"conversations": [{"from": "human", "value": "<image>\nq"}]}, "conversations", "exactly two turns, got 1"),
        (
            {"conversations": [{"from": "user", "value": "<image>\nq"}, {"from": "gpt", "value": TRACE}]},
            "conversations[0].from",
            "expected 'human'",
        ),
        (
            {"conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": 3}]},
            "conversations[1]",
            "value",
        ),
        (
            {"conversations": [{"from": "human", "value": "q <image>\n"}, {"from": "gpt", "value": TRACE}]},
            "conversations[0].value",
            "must start with",
        ),
        ({"regions": "{not json"}, "regions", "not valid JSON"),
        ({"regions": "[1, 2]"}, "regions", "must decode to an object"),
        ({"regions": json.dumps({"<obj1>": [1, 2, 3]})}, "regions", "4 finite numbers"),
        ({"regions": json.dumps({"<obj1>": [1, 2, 3, True]})}, "regions", "4 finite numbers"),
        ({"image_size": [200]}, "image_size", "positive ints"),
        ({"image_size": [200, 0]}, "image_size", "positive ints"),
        ({"num_tokens": -1}, "num_tokens", "non-negative"),
        ({"regions": json.dumps({"<obj1>": [10, 20, 5, 60], "<obj2>": [0, 0, 5, 5]})}, "regions", "is empty"),
        # zero width on a cell boundary (the image's left edge): no cell to copy
        ({"regions": json.dumps({"<obj1>": [0, 20, 0, 60], "<obj2>": [0, 0, 5, 5]})}, "regions", "touches no cell"),
        ({"regions": json.dumps({"<obj1>": [10, 20, 201, 60], "<obj2>": [0, 0, 5, 5]})}, "regions", "outside the 200x120"),
        ({"regions": json.dumps({"<obj1>": [-1, 20, 50, 60], "<obj2>": [0, 0, 5, 5]})}, "regions", "outside"),
        (
            {"regions": json.dumps({"<obj1>": [10, 20, 50, 60], "<obj2>": [0, 0, 5, 5], "<obj9>": [0, 0, 5, 5]})},
            "regions",
            "'<obj9>' never occurs",
        ),
        ({"regions": json.dumps({"<obj1>": [10, 20, 50, 60]})}, "conversations[1].value", "without a region: <obj2>"),
        (
            {"conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": 'detect(query="x, objects=["<obj1>"])'}],
             "regions": json.dumps({"<obj1>": [0, 0, 5, 5]})},
            "conversations[1].value",
            "malformed grounded trace",
        ),
        ({"image_size": [210, 120]}, "image", "image is 200x120"),
    ],
)
def test_validation_errors_name_record_and_field(over, field, snippet):
    errs = _errors(_row("rec-7", **over), check_image=True)
    assert errs, "expected a validation error"
    e = next((e for e in errs if e.field == field), None)
    assert e is not None, [str(x) for x in errs]
    assert snippet in e.reason, str(e)
    assert str(e).startswith("record 'rec-7': field ") and isinstance(e, ValueError)


def test_valid_row_has_no_errors_and_object_rule_switch():
    assert _errors(_row("ok"), check_image=True) == []
    # keys not built from <objN> tags: only the object rule complains, and it can be switched off
    row = _row("k", regions=json.dumps({"<obj1>": [10, 20, 50, 60], "<obj2>": [0, 0, 5, 5]}))
    row["conversations"][1]["value"] = TRACE + " Also <obj12>."
    errs = _errors(row)
    assert [e.field for e in errs] == ["conversations[1].value"] and "<obj12>" in errs[0].reason
    assert "<obj1>," not in errs[0].reason  # "<obj1>" inside "<obj12>" does not count as covered
    assert _errors(row, require_object_regions=False) == []


def test_missing_id_uses_row_index():
    row = _row(None)
    with pytest.raises(V1GError, match=r"record #5 \(no id\): field 'id': missing"):
        record_from_row(row, index=5)


def test_batch_reading_records_bad_items_and_goes_on(tmp_path):
    good = record_from_row(_row("g1"))
    path = tmp_path / "mixed.jsonl"
    write_v1g([good], path)
    with path.open("a") as fh:
        fh.write("{broken json\n")
        fh.write(json.dumps({**_row("b2", img="images/g1.png"), "regions": json.dumps({"<obj1>": [0, 0, 999, 9]})}) + "\n")
        fh.write(json.dumps({**_row("g3", img="images/g1.png")}) + "\n")
        fh.write(json.dumps({**_row("b4", img="images/nope.png")}) + "\n")
    items = list(iter_v1g(path, check_image=True))
    assert [type(i).__name__ for i in items] == ["V1GRecord", "BadRecord", "BadRecord", "V1GRecord", "BadRecord"]
    res = read_v1g(path, check_image=True)
    assert [r.id for r in res.records] == ["g1", "g3"]
    assert [(b.index, b.id, b.field) for b in res.bad] == [(1, None, "<row>"), (2, "b2", "regions"), (4, "b4", "image")]
    assert "line 2" in res.bad[0].reason and "invalid JSON" in res.bad[0].reason
    assert "cannot open image" in res.bad[2].reason
    with pytest.raises(V1GError, match="record #1"):
        read_v1g(path, strict=True)
    with pytest.raises(ValueError, match="unsupported v1g file type"):
        read_v1g(tmp_path / "x.csv")


def test_write_resume_skips_written_ids_and_recovers_cut_line(tmp_path):
    recs = [record_from_row(_row(f"r{i}")) for i in range(4)]
    path = tmp_path / "v1g.jsonl"
    assert write_v1g(recs[:2], path) == 2
    with path.open("a") as fh:
        fh.write('{"id": "r2", "ima')  # killed mid-line
    # drop the partial line as a rerun would see it: resume must not duplicate r0/r1
    text = path.read_text()
    path.write_text(text[: text.rindex("\n") + 1])
    assert write_v1g(recs, path, resume=True) == 2
    ids = [json.loads(l)["id"] for l in path.read_text().splitlines()]
    assert ids == ["r0", "r1", "r2", "r3"]
    assert write_v1g(recs, path, resume=True) == 0


def test_image_filenames_are_safe_and_distinct(tmp_path):
    recs = [record_from_row(_row("a/b")), record_from_row(_row("a_b")), record_from_row(_row("a?b"))]
    write_v1g(recs, tmp_path / "v.jsonl")
    names = [json.loads(l)["image"] for l in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert len(set(names)) == 3 and all("/" not in n[len("images/") :] for n in names)
    assert read_v1g(tmp_path / "v.jsonl", strict=True, check_image=True).records[0].id == "a/b"


# ---------------------------------------------------------------- expansion


def test_expand_regions_official_rule_by_hand():
    # 112x84 image -> smart_resize -> 112x84 (4x3 cells). Box [30, 0, 60, 30] -> cols 1..2, rows 0..1.
    text = 'detect(query="q", objects=["K"]) then K again'
    out = expand_regions(text, {"K": [30, 0, 60, 30]}, (112, 84))
    region = "<region>[0.27, 0.00, 0.54, 0.36]<|copy_1|><|copy_2|><|copy_5|><|copy_6|></region>"
    assert out == f'detect(query="q", objects=["{region}"]) then {region} again'
    g = parse(out, num_image_tokens=12)
    assert g.copy_ids == [1, 2, 5, 6, 1, 2, 5, 6]
    # offset for a second image of the sample; keep_key gives the <objN><region> output form
    two = SlotMap.for_images([(280, 280), (112, 84)], **QWEN2_5_VL)  # the first image has 10 x 10 = 100 slots
    out2 = expand_regions("see <obj4>", {"<obj4>": [30, 0, 60, 30]}, (112, 84), two, image=1, keep_key=True)
    assert out2 == "see <obj4><region>[0.27, 0.00, 0.54, 0.36]<|copy_101|><|copy_102|><|copy_105|><|copy_106|></region>"
    with pytest.raises(ValueError, match="not found"):
        expand_regions("no key here", {"K": [0, 0, 1, 1]}, (112, 84))


def test_expand_regions_normalises_by_each_samples_own_size():
    # The official collator used the last image's size for every sample; here each sample uses its own.
    a = expand_regions("X", {"X": [50, 50, 100, 100]}, (200, 200))
    b = expand_regions("X", {"X": [50, 50, 100, 100]}, (400, 100))
    assert a.startswith("<region>[0.25, 0.25, 0.50, 0.50]")
    assert b.startswith("<region>[0.12, 0.50, 0.25, 1.00]")


def test_expand_regions_matches_geometry_and_is_substring_safe():
    size = (300, 200)
    grid = MergedGrid.for_image(size)
    regions = {"<obj1>": [0, 0, 100, 50], "<obj1>_part": [150, 100, 300, 200]}
    out = expand_regions("<obj1>_part then <obj1>", regions, size, SlotMap.for_images([size], **QWEN2_5_VL))
    g = parse(out, num_image_tokens=grid.num_cells)
    r_part, r_one = g.regions
    assert list(r_part.copy_ids) == geometry.box_to_cells(regions["<obj1>_part"], size, grid)
    assert list(r_one.copy_ids) == geometry.box_to_cells(regions["<obj1>"], size, grid)
    assert "_part" not in out  # the longer key won at its position


def test_training_view_and_expanded_trace():
    big = record_from_row(_row("big", size=(1344, 1008), regions=json.dumps({"<obj1>": [11, 21, 101, 201], "<obj2>": [0, 0, 1344, 1008]})))
    size, regions = training_view(big)
    assert size == (672, 504)
    assert regions == {"<obj1>": [5, 10, 51, 101], "<obj2>": [0, 0, 672, 504]}
    small = record_from_row(_row("small"))
    assert training_view(small) == ((200, 120), small.regions)
    assert training_view(big, max_side=None) == ((1344, 1008), big.regions)
    n_cells = MergedGrid.for_image(size).num_cells
    text = big.expanded_trace()
    g = parse(text, num_image_tokens=n_cells)
    assert "<obj" not in text  # official rule: the key itself is replaced, in detect calls and in prose
    r1, r2, r1_again, r2_again = g.regions
    assert r1 == r1_again and r2 == r2_again
    assert r1.box == (0.01, 0.02, 0.08, 0.20)
    assert list(r2.copy_ids) == list(range(24 * 18))  # <obj2> covers the whole training image, raster order
    g2 = parse(big.expanded_trace(keep_key=True), num_image_tokens=n_cells)
    assert g2.object(1).box == (0.01, 0.02, 0.08, 0.20) and g2.object(1).query == "red square"


def test_resume_after_torn_line_does_not_corrupt_next_record(tmp_path):
    from PIL import Image

    recs = [V1GRecord(f"r{i}", Image.new("RGB", (56, 56)), [{"from": "human", "value": "<image>\nq"},
                                                             {"from": "gpt", "value": "a"}], {}, (56, 56))
            for i in range(3)]
    path = tmp_path / "out.jsonl"
    write_v1g(recs[:2], path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])  # the second record torn mid-line, as by kill -9
    assert write_v1g(recs, path, resume=True) == 2
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert ids == ["r0", "r1", "r2"]


def test_expand_first_occurrence_without_box_text():
    text = 'detect(query="a", objects=["<obj1>"]) x\ndetect(query="b", objects=["<obj1>"])'
    out = expand_regions(text, {"<obj1>": [0, 0, 28, 28]}, (56, 56), keep_key=True, occurrences="first",
                         box_text=False)
    assert out == ('detect(query="a", objects=["<obj1><region><|copy_0|></region>"]) x\n'
                   'detect(query="b", objects=["<obj1>"])')
    assert expand_regions(text, {"<obj1>": [0, 0, 28, 28]}, (56, 56), keep_key=True).count("<region>[0.00") == 2
    with pytest.raises(ValueError, match="occurrences"):
        expand_regions(text, {"<obj1>": [0, 0, 28, 28]}, (56, 56), occurrences="last")


# ---------------------------------------------------------------- leniency: clamped and zero-area boxes


def test_boxes_slightly_past_the_edge_are_clamped_and_noted():
    """Like the official box -> cell rule (which clips), a box within max(2 px, 1% of the side) of the image is
    clamped, not rejected; the clamp is noted on the record and counted. Further out: rejected, naming the key."""
    regions = {"<obj1>": [-1, 20, 50, 60], "<obj2>": [100, 0, 201.5, 121]}  # 200x120: tolerance 2 px both ways
    res = read_v1g([_row("edge", regions=json.dumps(regions))], check_image=True)
    assert res.bad == []
    rec = res.records[0]
    assert rec.regions == {"<obj1>": [0, 20, 50, 60], "<obj2>": [100, 0, 200, 120]}
    assert res.clamped_boxes == 2 and "'<obj1>' [-1, 20, 50, 60] clamped to [0, 20, 50, 60]" in rec.clamped[0]
    far = {"<obj1>": [-3, 20, 50, 60], "<obj2>": [100, 0, 200, 120]}
    res = read_v1g([_row("far", regions=json.dumps(far))])
    assert [(b.id, b.field) for b in res.bad] == [("far", "regions")]
    assert "'<obj1>'" in res.bad[0].reason and "clamp tolerance" in res.bad[0].reason
    # 1% of a 1000-px side is 10 px: the tolerance scales with the image
    big = {"<obj1>": [-9, 20, 50, 60], "<obj2>": [100, 0, 1000, 120]}
    assert read_v1g([_row("big", size=(1000, 120), regions=json.dumps(big))]).records[0].regions["<obj1>"][0] == 0
    # strict reading (clamp_boxes=False) rejects the 1-px overshoot as before
    strict = read_v1g([_row("edge", regions=json.dumps(regions))], clamp_boxes=False)
    assert strict.bad and "outside the 200x120 image" in strict.bad[0].reason


def test_zero_area_box_gets_the_cells_it_touches():
    regions = {"<obj1>": [10, 20, 10, 60], "<obj2>": [100, 0, 200, 120]}  # zero width inside column 0
    rec = read_v1g([_row("thin", regions=json.dumps(regions))], strict=True).records[0]
    grid = MergedGrid.for_image(rec.image_size)
    assert geometry.box_to_cells(regions["<obj1>"], rec.image_size) == [0, grid.cols]  # rows 0-1 of column 0
    g = parse(rec.expanded_trace(max_side=None), num_image_tokens=grid.num_cells)
    assert g.regions[0].copy_ids == (0, grid.cols)
    # one that clamps onto the image edge touches nothing: rejected with a reason
    res = read_v1g([_row("off", regions=json.dumps({"<obj1>": [201, 20, 202, 60], "<obj2>": [0, 0, 5, 5]}))])
    assert res.bad[0].field == "regions" and "touches no cell" in res.bad[0].reason
    assert "after clamping: box of '<obj1>' [201, 20, 202, 60] clamped to [200, 20, 200, 60]" in res.bad[0].reason


def test_image_check_is_header_only_and_names_the_problem(tmp_path):
    """check_image catches a missing file, a non-image and a size mismatch from the header; a PNG truncated after
    its header passes here (it fails when decoded: see test_collate) and the check leaves no file open."""
    import warnings

    good = tmp_path / "good.png"
    _png().save(good)
    (tmp_path / "text.png").write_text("not an image at all")
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    rows = [_row("missing", img=str(tmp_path / "nope.png")), _row("text", img=str(tmp_path / "text.png")),
            _row("size", img=str(good), image_size=[210, 120]), _row("cut", img=str(tmp_path / "cut.png")),
            _row("ok", img=str(good))]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)  # an unclosed file would show up here
        res = read_v1g(rows, check_image=True)
    assert [r.id for r in res.records] == ["cut", "ok"]
    reasons = {b.id: (b.field, b.reason) for b in res.bad}
    assert reasons["missing"][0] == "image" and "No such file" in reasons["missing"][1]
    assert reasons["text"][0] == "image" and "cannot identify image" in reasons["text"][1]
    assert reasons["size"] == ("image", "image is 200x120 but image_size says 210x120")
