"""The shapes world: scenes, questions, traces, variants, splits on disk."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from pointcopy import trace as T
from pointcopy.data.shapes import FAMILIES, build_split, generate_scene, make_item, read_items, render
from pointcopy.data.shapes.build import item_record, png_bytes
from pointcopy.data.shapes.scene import CELL, RIM, SceneConfig
from pointcopy.data.shapes.questions import ATTR_ORDER
from pointcopy.data.shapes.traces import (canonical_words, describe, model_text, regions, strip_copies, trace_text,
                                          variants)
from pointcopy.data.v1g import expand_regions, read_v1g, validate_record
from pointcopy.geometry import MergedGrid, box_to_cells

from shapes_test_helpers import build_small, oracle_answer  # noqa: E402 - tests/data is on sys.path (rootdir mode)

ITEMS = [make_item(3, i) for i in range(240)]


def test_same_seed_same_png_and_records():
    for i in (0, 5, 11):
        a, b = make_item(1, i), make_item(1, i)
        assert png_bytes(a.scene) == png_bytes(b.scene)
        for v in ("copy", "coord", "nocopy"):
            assert item_record(a, v).to_row() == item_record(b, v).to_row()
    assert png_bytes(make_item(1, 0).scene) != png_bytes(make_item(2, 0).scene)


def test_objects_disjoint_inside_tight_and_in_raster_order():
    cfg = SceneConfig()
    for s in range(150):
        sc = generate_scene(s)
        assert cfg.min_objects <= len(sc.objects) <= cfg.max_objects
        assert sc.width % CELL == 0 and sc.height % CELL == 0
        boxes = [o.box for o in sc.objects]
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            assert 0 <= x0 < x1 <= sc.width and 0 <= y0 < y1 <= sc.height
            for bx in boxes[i + 1 :]:  # separated by at least the gap on some axis
                assert x1 + cfg.gap <= bx[0] or bx[2] + cfg.gap <= x0 or y1 + cfg.gap <= bx[1] or bx[3] + cfg.gap <= y0
        # Raster order of the first merged cell: the first pointer of each enumerated object never goes back.
        firsts = [min(box_to_cells(o.box, sc.size)) for o in sc.objects]
        assert firsts == sorted(firsts) and [o.id for o in sc.objects] == list(range(1, len(boxes) + 1))
        # Each box is the tight bounding box of that object's drawn pixels.
        img = np.asarray(render(sc)).astype(int)
        fg = np.abs(img - np.array(sc.background)).sum(-1) > 0
        for o in sc.objects:
            x0, y0, x1, y1 = o.box
            ys, xs = np.nonzero(fg[y0:y1, x0:x1])
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (0, 0, x1 - x0, y1 - y0)
        assert fg.sum() == sum(fg[o.box[1] : o.box[3], o.box[0] : o.box[2]].sum() for o in sc.objects)


def _objects_sharing_a_cell(scene) -> int:
    cells = [set(box_to_cells(o.box, scene.size)) for o in scene.objects]
    return sum(any(c & d for j, d in enumerate(cells) if j != i) for i, c in enumerate(cells))


def test_exclusive_cells_give_every_object_cells_of_its_own():
    free, exclusive = SceneConfig(max_objects=8), SceneConfig(max_objects=8, exclusive_cells=True)
    scenes = [generate_scene(s, exclusive) for s in range(300)]
    assert sum(map(_objects_sharing_a_cell, scenes)) == 0
    assert max(len(sc.objects) for sc in scenes) == 8  # crowded scenes still fit
    for sc in scenes[:40]:  # still separated by the gap, inside the margin, tight and in raster order
        for i, a in enumerate(sc.objects):
            assert exclusive.margin <= a.box[0] and a.box[2] <= sc.width - exclusive.margin
            for b in sc.objects[i + 1:]:
                assert (a.box[2] + exclusive.gap <= b.box[0] or b.box[2] + exclusive.gap <= a.box[0]
                        or a.box[3] + exclusive.gap <= b.box[1] or b.box[3] + exclusive.gap <= a.box[1])
        firsts = [min(box_to_cells(o.box, sc.size)) for o in sc.objects]
        assert firsts == sorted(firsts)
    # Free placement is what makes cells shared: most scenes have some.
    assert sum(_objects_sharing_a_cell(generate_scene(s, free)) > 0 for s in range(100)) > 50


def test_position_tint_colours_each_cell_and_keeps_boxes_tight():
    from dataclasses import replace

    cfg = SceneConfig(position_tint=8)
    for s in range(30):
        sc = generate_scene(s, cfg)
        assert sc.position_tint == 8 and type(sc).from_dict(sc.to_dict()) == sc
        # Same layout as without the tint: only the background changes.
        plain = generate_scene(s)
        assert plain.objects == sc.objects and plain.position_tint == 0
        bg = np.asarray(render(replace(sc, objects=()))).astype(int)
        for row in range(sc.height // CELL):
            for col in range(sc.width // CELL):
                want = np.array(sc.background) - 8 * np.array([col, row, 0])
                assert (bg[row * CELL:(row + 1) * CELL, col * CELL:(col + 1) * CELL] == want).all(), (s, row, col)
        img = np.asarray(render(sc)).astype(int)
        fg = np.abs(img - bg).sum(-1) > 0
        for o in sc.objects:
            x0, y0, x1, y1 = o.box
            ys, xs = np.nonzero(fg[y0:y1, x0:x1])
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (0, 0, x1 - x0, y1 - y0)
        assert fg.sum() == sum(fg[o.box[1] : o.box[3], o.box[0] : o.box[2]].sum() for o in sc.objects)
    with pytest.raises(ValueError, match="position_tint"):
        SceneConfig(position_tint=40)


def test_scene_config_errors_and_forced_count():
    with pytest.raises(ValueError, match="min_side"):
        SceneConfig(min_side=100)
    with pytest.raises(ValueError, match="min_objects"):
        SceneConfig(min_objects=5, max_objects=3)
    assert len(generate_scene("x", num_objects=10).objects) == 10
    with pytest.raises(ValueError, match="could not place"):
        generate_scene("x", SceneConfig(min_side=56, max_side=56), num_objects=10)
    with pytest.raises(ValueError, match="27-px glyph leaves less than margin"):
        SceneConfig(small_px=27, exclusive_cells=True)


def test_metal_has_highlight_and_rim_rubber_is_flat():
    for s in range(40):
        sc = generate_scene(s)
        img = np.asarray(render(sc))
        for o in sc.objects:
            x0, y0, x1, y1 = o.box
            patch = img[y0:y1, x0:x1]
            colours = {tuple(p) for p in patch.reshape(-1, 3)}
            metal = o.material == "metal"
            assert ((255, 255, 255) in colours) == metal, o
            assert (RIM in colours) == metal, o
            if metal:  # the rim is on every side of the glyph: its outermost pixels are rim-coloured
                rim = (patch == RIM).all(-1)
                assert rim[0].any() and rim[-1].any() and rim[:, 0].any() and rim[:, -1].any(), o


def test_answers_match_an_independent_oracle():
    for it in ITEMS:
        objs = [dict(vars(o)) for o in it.scene.objects]
        assert oracle_answer(it.question.text, objs) == it.question.answer, it.question.text
        assert trace_text(it.scene, it.question).endswith(f"\nAnswer: {it.question.answer}")


def test_families_cycle_and_answers_balanced():
    fams = [it.question.family for it in ITEMS]
    assert fams == [FAMILIES[i % 4] for i in range(len(ITEMS))]
    yes = sum(it.question.answer == "yes" for it in ITEMS if it.question.family == "compare")
    assert 20 <= yes <= 40  # 60 comparison items, target 50/50
    counts = {it.question.answer for it in ITEMS if it.question.family == "count"}
    assert counts == {"0", "1", "2", "3", "4"}


def test_every_pointer_lies_in_its_objects_cells():
    for it in ITEMS[:80]:
        text, regs = variants(it.scene, it.question)["copy"]
        grid = MergedGrid.for_image(it.scene.size)
        parsed = T.parse(model_text(text, regs, it.scene.size), num_image_tokens=grid.num_cells)
        cells = {o.id: box_to_cells(o.box, it.scene.size, grid) for o in it.scene.objects}
        # Every region follows its <objN> key (keep_key form): check each region's copies against that object.
        nodes = parsed.nodes
        seen = 0
        for n in nodes:
            entries = [(e.ref, e.region) for e in n.objects if e.region] if isinstance(n, T.Detect) else []
            for ref, region in entries:
                assert list(region.copy_ids) == cells[ref.obj_id]
                seen += 1
        for a, b in zip(nodes, nodes[1:]):
            if isinstance(b, T.Region):
                assert isinstance(a, T.ObjectRef) and list(b.copy_ids) == cells[a.obj_id]
                seen += 1
        # one region per object, at its first mention (the enumeration); later mentions are bare ids
        assert seen == len(it.scene.objects) == len(parsed.regions)
        assert len(re.findall(r"<obj\d+>", text)) >= seen
        assert [o.obj_id for o in parsed.objects] == [o.id for o in it.scene.objects]


def test_variants_differ_only_in_region_markup():
    for it in ITEMS[:80]:
        v = variants(it.scene, it.question)
        copy_text, regs = v["copy"]
        expanded = model_text(copy_text, regs, it.scene.size)
        assert regs == regions(it.scene) and v["coord"][1] == {} and v["nocopy"][1] == {}
        assert "<|copy_" not in v["coord"][0] and "<|copy_" in expanded
        assert "[0." not in expanded and re.search(r"<region>\[\d\.\d\d, ", v["coord"][0])  # pointers vs box text
        assert re.sub(r"<region>.*?</region>", "", expanded) == v["nocopy"][0] == copy_text
        assert re.sub(r"<region>.*?</region>", "", v["coord"][0]) == copy_text
        assert "<region>" not in v["nocopy"][0] and v["coord"][0].count("<region>") == expanded.count("<region>")


def test_trace_plans_quoted_steps_and_marks_every_object_locally():
    for it in ITEMS[:80]:
        q, scene = it.question, it.scene
        lines = trace_text(scene, q).split("\n")
        # Plan: each step's phrase, verbatim from the question, then its canonical words.
        assert lines[0] == "Find: " + "; ".join(f"{s.query} = {canonical_words(s.filter)}" for s in q.steps) + "."
        assert all(s.query in q.text for s in q.steps)
        head = 2 if q.family == "compare" else 1  # a comparison's relation line follows the plan
        running = [0] * len(q.steps)
        for o, line in zip(scene.objects, lines[head:]):
            if q.family == "compare":  # the relation word, carried on every object line
                line = line.removesuffix(f". Compare: {q.relation}")
            words, marks = line.split(": ")
            assert words.endswith(describe(o))
            for i, (mark, s) in enumerate(zip(marks.split("; "), q.steps)):
                hit = o.id in s.objects
                running[i] += hit
                # each filter word beside the object's word for the same attribute (describe() is in ATTR_ORDER)
                own = describe(o).split()
                words = [(w, own[ATTR_ORDER.index(a)]) for w, (a, _) in zip(canonical_words(s.filter).split(), s.filter.attrs)]
                pairs = " ".join(f"{w} {mine} {'equal' if w == mine else 'not'}" for w, mine in words)
                want = f"{pairs} {'yes' if hit else 'no'} {running[i]}"
                if hit and q.family == "attribute":  # the answer, read from this line's own attribute words
                    value = o.attr(q.asked)
                    carried = f". It is {'a ' if q.asked == 'shape' else ''}{value}"
                    assert q.asked == "material" or value in describe(o).split()
                if q.family == "attribute" and running[i]:  # ... and carried on every later mark
                    want += carried
                assert mark == want, (it.id, line)
                # the mark is decidable from the line alone: every pair's verdict is `equal`
                verdicts = re.findall(r"\b(equal|not)\b", mark)
                assert len(verdicts) == len(s.filter.attrs)
                contained = all(v == "equal" for v in verdicts)
                removed_earlier = q.family == "subtraction" and any(o.id in p.objects for p in q.steps[:i])
                assert hit == (contained and not removed_earlier), (it.id, line)
        steps_text = "\n".join(lines[len(scene.objects) + head + 1:])
        for s, k in zip(q.steps, running):
            stated = f"{s.query}: <obj{s.objects[0]}>." if q.family == "attribute" else f"{s.query}: {k}."
            assert stated in steps_text
        if q.family == "compare":  # the relation line under the plan, repeated before the comparison and verdict
            line = re.search(rf"^Compare: {q.relation}\. \d+ ([<>=]) \d+: {q.relation} (\w+) (equal|not) {q.answer}\.$",
                             steps_text, re.M)
            assert line, steps_text
            sign_word = {">": "more", "<": "fewer", "=": "same"}[line.group(1)]
            assert line.group(2) == sign_word and line.group(3) == ("equal" if sign_word == q.relation else "not")
            assert lines[1] == f"Compare: {q.relation}."
            assert all(re.search(rf" \d+\. Compare: {q.relation}$", x) for x in lines[2:2 + len(scene.objects)])
            assert trace_text(scene, q).count("Compare: ") == len(scene.objects) + 2
        if q.family == "attribute":  # "It is" from the matching object on; the step line repeats the line above
            value = steps_text.split("It is ")[1].split(".")[0]
            match = q.steps[0].objects[0]
            assert trace_text(scene, q).count("It is ") == len(scene.objects) - match + 2
            assert lines[match].endswith(f"It is {value}") and lines[len(scene.objects)].endswith(f"It is {value}")


def test_records_validate_and_split_resumes(tmp_path):
    paths = build_small(tmp_path / "a")
    for v in ("copy", "coord", "nocopy"):
        res = read_v1g(paths[v], strict=True, check_image=True, require_object_regions=(v == "copy"))
        assert len(res.records) == 24
        for rec in res.records:
            validate_record(rec, check_image=True, require_object_regions=(v == "copy"))
    items = read_items(tmp_path / "a")
    assert [r["id"] for r in items] == [r.id for r in read_v1g(paths["copy"]).records]
    assert len(list((tmp_path / "a" / "images").glob("*.png"))) == 24  # shared by the variants

    # A killed build: truncate every file mid-way (and cut a line), rerun, compare bytes with a clean build.
    for key in ("copy", "coord", "items"):
        lines = paths[key].read_bytes().splitlines(keepends=True)
        paths[key].write_bytes(b"".join(lines[:10]) + lines[10][:15])
    paths2 = build_small(tmp_path / "a")
    for key in ("copy", "coord", "nocopy", "items"):
        rows = [json.loads(x) for x in paths2[key].read_text().splitlines()]
        assert len({r["id"] for r in rows}) == len(rows) == 24
    clean = build_small(tmp_path / "b")
    for key in ("copy", "coord", "nocopy", "items"):
        assert sorted(paths2[key].read_text().splitlines()) == sorted(clean[key].read_text().splitlines())
    assert (tmp_path / "a/images/shapes-7-000003.png").read_bytes() == (tmp_path / "b/images/shapes-7-000003.png").read_bytes()


def test_split_refuses_to_resume_a_split_built_with_other_settings(tmp_path):
    build_split(tmp_path / "s", 3, seed=5, config=SceneConfig(max_objects=5))
    build_split(tmp_path / "s", 4, seed=5, config=SceneConfig(max_objects=5))  # same settings: resumes
    assert len(read_items(tmp_path / "s")) == 4
    with pytest.raises(ValueError, match=r"other settings \(scenes differ\)"):
        build_split(tmp_path / "s", 4, seed=5, config=SceneConfig(max_objects=5, exclusive_cells=True))
    with pytest.raises(ValueError, match=r"seed differ"):
        build_split(tmp_path / "s", 4, seed=6, config=SceneConfig(max_objects=5))
    (tmp_path / "s" / "split.json").unlink()  # a split from before settings were recorded
    with pytest.raises(ValueError, match="older pointcopy"):
        build_split(tmp_path / "s", 4, seed=5, config=SceneConfig(max_objects=5))
    build_split(tmp_path / "s", 2, seed=5, config=SceneConfig(max_objects=5, exclusive_cells=True), resume=False)
    assert len(read_items(tmp_path / "s")) == 2


def test_build_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown variants"):
        build_split(tmp_path, 2, variants_="pointer")
    with pytest.raises(ValueError, match="unknown question family"):
        make_item(0, 0, families=("algebra",))
