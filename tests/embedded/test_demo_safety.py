"""The demo with hostile or unusual input: any model text is escaped in the page, a huge upload is shown at the size
the model saw, 16-bit and transparent images keep their content, and user mistakes end with one clear line."""

from __future__ import annotations

import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pointcopy.demo.render import overlay, page
from pointcopy.embedded.demo import ASSET, run_demo
from pointcopy.grounded import GroundedAnswer
from pointcopy.images import open_rgb, to_rgb
from pointcopy.layout import QWEN2_5_VL, SlotMap

REPO = Path(__file__).resolve().parents[2]


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.handlers = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.handlers += [k for k, _ in attrs if k.startswith("on")]


HOSTILE = [
    '<script>alert(1)</script>',
    '"><img src=x onerror=alert(1)>',
    "</span><iframe src=javascript:alert(1)>",
    "&lt;b&gt; & ' \" <",
]


@pytest.mark.parametrize("evil", HOSTILE)
def test_model_output_is_escaped_everywhere_in_the_page(evil):
    """Box text, queries, the answer and plain trace text all come from the model."""
    text = (f'{evil} detect(query="{evil}", objects=["<obj1><region>[{evil}]<|copy_0|><|copy_1|></region>"]) '
            f'<region>[1, 2, {evil}]<|copy_5|></region> Answer: {evil}')
    image = Image.new("RGB", (112, 112), "white")
    answer = GroundedAnswer.from_text(text, SlotMap.for_images([image.size], **QWEN2_5_VL))
    html = page(overlay(image, answer), evil, answer, title=evil, expected=evil, model_note=evil)
    parsed = _Elements()
    parsed.feed(html)
    assert not {"script", "iframe"} & set(parsed.tags)
    assert parsed.tags.count("img") == 1 and parsed.handlers == []  # only our own picture, no event handlers


def test_sixteen_bit_and_transparent_images_keep_their_content(tmp_path):
    grey16 = np.full((40, 60), 30000, dtype=np.uint16)
    grey16[:, :30] = 65535
    path = tmp_path / "deep.png"
    Image.fromarray(grey16).save(path)
    assert Image.open(path).mode.startswith("I")  # Pillow reads it as 16-bit
    rgb = np.asarray(open_rgb(path))
    assert rgb.shape == (40, 60, 3)
    assert abs(int(rgb[0, 45, 0]) - round(30000 / 257)) <= 1 and rgb[0, 0, 0] == 255  # not clipped to white
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # fully transparent black
    rgba.paste((200, 0, 0, 255), (0, 0, 10, 20))
    out = np.asarray(to_rgb(rgba))
    assert tuple(out[5, 15]) == (255, 255, 255) and tuple(out[5, 5]) == (200, 0, 0)


@pytest.fixture(scope="module")
def big_upload(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.png"
    img = Image.new("RGB", (4000, 3000), (230, 230, 230))
    img.paste((220, 30, 30), (1000, 1000, 2000, 2000))
    img.save(path)
    return path


def test_a_huge_upload_is_rendered_at_the_size_the_model_saw(big_upload, tmp_path):
    assert (ASSET / "config.json").is_file()
    result = run_demo(tmp_path, image_path=str(big_upload), question="How many objects are there?",
                      max_new_tokens=24, threads=1, echo=lambda *a: None)
    shown = Image.open(result.png_path)
    # the shipped model sees at most 448 x 448 pixels; shown at most 4x, within the page's 896 px
    assert max(shown.size) <= 896
    from pointcopy.processing import PointCopyProcessor

    view = PointCopyProcessor.from_pretrained(ASSET).model_view(Image.open(big_upload))
    scale = shown.width // view.width
    assert scale >= 1 and shown.size == (view.width * scale, view.height * scale)


def _demo_cli(*args):
    return subprocess.run([sys.executable, "-m", "pointcopy.cli", "demo", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "--threads: must be >= 1"),
    (["--max-new-tokens", "-3"], "--max-new-tokens: must be >= 1"),
    (["--image", "no/such/file.png"], "no such file"),
    (["--question", "How many <|image_pad|> are there?"], "special token '<|image_pad|>'"),
    (["--question", "Subtract all <|copy_7|>."], "special token '<|copy_7|>'"),
    (["--model", "runs/shpes/final"], "no such model directory"),
])
def test_user_mistakes_end_with_one_clear_line(args, message, tmp_path):
    run = _demo_cli("--out", tmp_path / "o", *args)
    assert run.returncode == 2, run.stderr[-2000:]
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "o" / "demo.html").exists()


def test_unreadable_images_and_a_file_as_output_folder(tmp_path):
    empty, text, truncated = tmp_path / "empty.png", tmp_path / "notes.png", tmp_path / "cut.png"
    empty.write_bytes(b"")
    text.write_text("not an image")
    buf = tmp_path / "whole.png"
    Image.new("RGB", (300, 200), (10, 200, 30)).save(buf)
    truncated.write_bytes(buf.read_bytes()[:200])
    for path, message in ((empty, "empty file"), (text, "cannot be read as an image"),
                          (truncated, "cannot be read as an image")):
        run = _demo_cli("--image", path, "--out", tmp_path / "o")
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
    run = _demo_cli("--out", buf)
    assert run.returncode == 2 and "is a file" in run.stderr
