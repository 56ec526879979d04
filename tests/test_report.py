"""`chainrule report`: one self-contained HTML page of one run or a comparison of several, checked
as text and, when a Chromium / Chrome binary is installed, as a real headless browser renders it."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from chainrule.apps.report import MISSING, read_run, render_html, write_report
from chainrule.cli import main

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def _browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny real runs on 4x4 binary images (so each has samples.png): fvsbn and made."""
    root = tmp_path_factory.mktemp("report")
    g = np.random.default_rng(0)
    x = (g.random((300, 1, 4, 4)) < 0.3).astype(np.int64)
    x[:, :, :, 1] = x[:, :, :, 0]  # some structure
    np.save(root / "toy.npy", x)
    a, b = root / "run_fvsbn", root / "run_made"
    assert main(["train", "fvsbn", "--dataset", str(root / "toy.npy"), "--epochs", "2", "--out", str(a),
                 "--no-progress", "--threads", "1", "--num-samples", "16"]) == 0
    assert main(["train", "made", "--dataset", str(root / "toy.npy"), "--epochs", "3", "--out", str(b),
                 "-p", "hidden_sizes=[16]", "--no-progress", "--threads", "1", "--num-samples", "16"]) == 0
    return root, a, b


def _img_srcs(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\bsrc="([^"]*)"', page)


def test_single_run_report_default_path_and_content(runs, capsys):
    _, a, _ = runs
    assert main(["report", str(a)]) == 0
    out = a / "report.html"
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    results = json.loads((a / "results.json").read_text())
    assert "run_fvsbn" in page and "fvsbn" in page and "toy.npy" in page
    assert f"{results['test']['nll_nats']:.4f}" in page and f"{results['test']['bits_per_dim']:.4f}" in page
    assert f"{results['test']['perplexity']:.4f}" in page and f"{results['parameters']:,}" in page
    assert 'id="comparison"' not in page  # one run: no comparison table
    assert "Configuration (config.toml)" in page
    srcs = _img_srcs(page)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)  # curves + samples
    for s in srcs:  # real PNGs
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).verify()
    # self-contained: no external resource
    assert not re.search(r'(src|href)="(https?:|file:|//)', page) and "<link" not in page and "<script" not in page


def test_comparison_report_and_missing_pieces(runs, tmp_path, monkeypatch):
    root, a, b = runs
    # a third run "still training": a copy without results.json, samples or config.toml
    c = tmp_path / "still<training>"
    shutil.copytree(a, c)
    for f in ("results.json", "samples.png", "config.toml", "report.html"):
        (c / f).unlink(missing_ok=True)
    (c / "samples.txt").write_text("a <b>bold</b> & <script>alert(1)</script> sample")
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(a), str(b), str(c)]) == 0
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert 'id="comparison"' in page
    table = page.split('id="comparison"', 1)[1].split("</table>", 1)[0]
    for run in (a, b):
        res = json.loads((run / "results.json").read_text())
        assert run.name in table and res["model"] in table and "<th>dataset</th>" in table and "toy.npy" in table
        assert f"{res['test']['nll_nats']:.4f}" in table and f"{res['best_val_nll_nats']:.4f}" in table
        assert f">{res['epochs_run']}<" in table
    # the unfinished run: escaped name, missing test numbers as "—", parameters from its config (meta device)
    assert "still&lt;training&gt;" in page and "still<training>" not in page
    assert table.count(MISSING) >= 2
    info = read_run(c)
    assert info.test is None and info.parameters == json.loads((a / "results.json").read_text())["parameters"]
    assert info.config_source == "checkpoint extra.run_config" and info.epochs == 2
    # text samples escaped in <pre>
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    assert len(_img_srcs(page)) == 3  # one curves figure + two sample grids


def test_not_a_run_directory_is_an_input_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a run directory" in err and len(err.splitlines()) == 1
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert not (tmp_path / "empty" / "report.html").exists()


def _run_browser(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(_browser() is None, reason="no Chromium/Chrome binary installed")
def test_report_renders_in_a_headless_browser(runs, tmp_path):
    _, a, b = runs
    page = write_report([a, b], tmp_path / "cmp.html")
    flags = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = page.resolve().as_uri()
    dom = _run_browser(flags + ["--dump-dom", url])
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout
    assert "run_fvsbn" in text and "run_made" in text and "Comparison" in text
    for run in (a, b):
        res = json.loads((run / "results.json").read_text())
        assert f"{res['test']['nll_nats']:.4f}" in text and f"{res['test']['bits_per_dim']:.4f}" in text
    srcs = _img_srcs(text)
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)

    shot = tmp_path / "shot.png"
    res = _run_browser(flags + [f"--screenshot={shot}", "--window-size=1200,1600", "--hide-scrollbars", url])
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    assert shot.stat().st_size > 20_000
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 1600)
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50  # text, tables and figures: far from a blank page
    lo, hi = img.convert("L").getextrema()
    assert hi - lo > 100


def test_text_run_report_leads_with_its_unit(tmp_path):
    """A character-level run shows nats and bits per character (as `chainrule eval` prints them),
    not only nats per window."""
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. " * 60)
    out = tmp_path / "run_text"
    assert main(["train", "lstm", "--dataset", str(text), "--block-size", "16", "--epochs", "1", "--out", str(out),
                 "-p", "hidden_size=8", "--no-progress", "--threads", "1", "--num-samples", "2"]) == 0
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    test = json.loads((out / "results.json").read_text())["test"]
    assert test["unit"] == "char"
    assert f"<th>NLL (nats/char)</th><td class=\"num\">{test['nats_per_token']:.4f}</td>" in page
    assert f"<th>bits/char</th><td class=\"num\">{test['bits_per_token']:.4f}</td>" in page
    assert "perplexity (per char)" in page and "<th>bits/dim</th>" not in page
    config = page.split("<h3>Configuration", 1)[1]
    assert "<th>level</th>" in config and "<th>block-size</th>" in config  # the text options of a text run


def test_image_runs_show_no_text_options(runs):
    """An image run's configuration leaves out the options of text runs (--level, --block-size)."""
    _, a, _ = runs
    assert "block-size" in (a / "config.toml").read_text()  # recorded, as every option is
    info = read_run(a)
    page = render_html([info])
    config = page.split("<h3>Configuration", 1)[1]
    assert "<th>level</th>" not in config and "<th>block-size</th>" not in config and "<th>epochs</th>" in config
