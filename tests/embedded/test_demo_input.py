"""The demo tells a user when their image is unlike the shapes world the shipped model knows, and stops a runaway
loop of one pointer: the checks on their own, and the demo on a hand-drawn white-background figure."""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw

from pointcopy.data.shapes.scene import SceneConfig, generate_scene, render
from pointcopy.embedded.input_check import unlike_the_world
from pointcopy.inference import RepeatedPointerStop

WORLD = SceneConfig(min_objects=3, max_objects=8, exclusive_cells=True)


def _figure(size=(640, 480)) -> Image.Image:
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).polygon([(100, 400), (500, 400), (300, 80)], outline="black", width=3)
    return im


def test_world_scenes_pass_and_figures_are_named():
    for seed in range(5):
        assert unlike_the_world(render(generate_scene(seed, WORLD)), WORLD) == []
    reasons = unlike_the_world(_figure(), WORLD)
    assert len(reasons) == 2 and "640x480" in reasons[0] and "background" in reasons[1]
    scene = render(generate_scene(0, WORLD))
    big = scene.resize((scene.width * 3, scene.height * 3))
    assert [r for r in unlike_the_world(big, WORLD)] and "background" not in " ".join(unlike_the_world(big, WORLD))
    assert "background" in " ".join(unlike_the_world(_figure((140, 140)), WORLD))  # right size, wrong world


def test_repeated_pointer_stop_fires_only_on_one_pointer_run():
    start = 1000
    stop = RepeatedPointerStop(start, run=4)
    ids = torch.tensor([[5, 1003, 1003, 1003, 1003],     # one pointer 4 times: stop
                        [5, 1003, 1004, 1003, 1003],     # pointers, not one repeated 4 times
                        [7, 9, 9, 9, 9]])                 # text repeated: not a pointer loop
    assert stop(ids).tolist() == [True, False, False] and stop.stopped == {0}
    assert not stop(ids[:, :3]).any()  # shorter than the run


def test_demo_warns_on_a_figure_unlike_the_world(tmp_path, capsys):
    from pointcopy.embedded.demo import run_demo

    _figure().save(tmp_path / "figure.png")
    lines = []
    run_demo(tmp_path / "out", image_path=str(tmp_path / "figure.png"), question="How many objects are there?",
             max_new_tokens=120, threads=1, echo=lines.append)
    warnings = [x for x in lines if x.startswith("warning:")]
    assert warnings and "does not look like the shapes world" in warnings[0]
    assert "Warning: this image does not look like the shapes world" in (tmp_path / "out" / "demo.html").read_text()


def test_demo_on_its_own_scene_has_no_warning_and_prints_the_seed(tmp_path):
    from pointcopy.embedded.demo import run_demo

    lines = []
    run_demo(tmp_path / "out", seed=11, max_new_tokens=640, threads=1, echo=lines.append)
    assert lines[0].startswith("scene seed: 11 ") and not [x for x in lines if x.startswith("warning:")]


def test_run_and_demo_speak_json_and_run_draws_its_regions(tmp_path, capsys):
    """`pointcopy run --json --out` and `pointcopy demo --json`: one JSON object each, with the regions' boxes
    in the original image's pixels, and run's page and overlay written."""
    import json

    from pointcopy.cli import main

    scene = render(generate_scene(5, WORLD))
    scene.save(tmp_path / "scene.png")
    assert main(["run", "--model", "src/pointcopy/embedded/assets/shapes-tiny", "--image", str(tmp_path / "scene.png"),
                 "--question", "How many red things are there?", "--max-new-tokens", "400", "--json",
                 "--out", str(tmp_path / "run")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["regions"] and all(0 <= b <= max(scene.size) for r in out["regions"] for b in r["box"])
    assert (tmp_path / "run" / "answer.html").exists() and (tmp_path / "run" / "answer_overlay.png").exists()
    assert main(["demo", "--json", "--seed", "4", "--out", str(tmp_path / "demo"), "--threads", "1"]) == 0
    demo = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert demo["seed"] == 4 and demo["answer"] is not None and demo["warnings"] == []
