"""`pointcopy demo` end to end (real command, real checkpoint) and its page in a real headless browser."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pointcopy.embedded.demo import ASSET, summarize_trace

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    assert (ASSET / "config.json").is_file(), "the shipped shapes-tiny checkpoint is missing"
    out = tmp_path_factory.mktemp("demo")
    run = subprocess.run([sys.executable, "-m", "pointcopy.cli", "demo", "--out", str(out), "--seed", "3"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return out, run.stdout


def test_demo_prints_trace_regions_and_answer(demo_out):
    out, stdout = demo_out
    assert "question:" in stdout and "answer:" in stdout
    assert "<obj1>" in stdout  # the region table lists the copied objects
    assert (out / "demo.html").is_file() and (out / "demo_overlay.png").is_file()
    html = (out / "demo.html").read_text()
    assert "data:image/png;base64," in html and 'class="region"' in html and "Answer:" in html


def test_summarize_trace():
    text = 'detect(query="object", objects=["<obj1><region>[0.10, 0.20, 0.30, 0.40]<|copy_1|><|copy_2|></region>"])'
    assert summarize_trace(text) == 'detect(query="object", objects=["<obj1>[0.10, 0.20, 0.30, 0.40]{2 cells}"])'


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/setup installs it; CI requires it)")
def test_demo_page_renders_in_headless_chromium(demo_out, tmp_path):
    out, _ = demo_out
    shot = tmp_path / "shot.png"
    run = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,900",
                          (out / "demo.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    page = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    overlay = np.asarray(Image.open(out / "demo_overlay.png").convert("RGB")).astype(int)
    # the overlay is drawn on the page at its natural size: locate it by template matching and compare it whole
    h, w = overlay.shape[:2]
    assert page.shape[0] >= h and page.shape[1] >= w
    from numpy.lib.stride_tricks import sliding_window_view

    gray_page, gray_overlay = page.sum(-1), overlay.sum(-1)
    patch = gray_overlay[h // 2:h // 2 + 12, w // 2:w // 2 + 12]  # a piece from the middle of the picture
    window = sliding_window_view(gray_page, patch.shape)  # (H', W', 12, 12)
    diff = np.abs(window - patch).sum((-1, -2))
    ys, xs = np.nonzero(diff <= 12 * 12 * 3)
    located = [(y - h // 2, x - w // 2) for y, x in zip(ys, xs) if y >= h // 2 and x >= w // 2]
    assert any(y + h <= page.shape[0] and x + w <= page.shape[1]
               and np.abs(page[y:y + h, x:x + w] - overlay).mean() < 2 for y, x in located), \
        "the overlay image is not visible on the rendered page"
    # region outlines are drawn in the palette's saturated colours: some must be on screen
    palette = np.array([[0xe6, 0x19, 0x4b], [0x3c, 0xb4, 0x4b], [0x43, 0x63, 0xd8], [0xf5, 0x82, 0x31]])
    hits = sum(int((np.abs(page - c).sum(-1) < 30).sum()) for c in palette)
    assert hits > 200
