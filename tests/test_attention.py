"""`bert attention`: the self-contained HTML page, the PNG heatmaps, and the page in a real (headless) browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bert_tiny import STORY
from bertcli.cli import app

runner = CliRunner()
CHROMIUM = Path("/usr/bin/chromium")


def _page_data(page: str) -> dict:
    m = re.search(r'<script id="attention-data" type="application/json">(.*?)</script>', page, flags=re.S)
    assert m, "the page has no embedded data"
    return json.loads(m.group(1))


def _write_page(tiny_bert: Path, out: Path, *extra: str) -> str:
    result = runner.invoke(app, ["attention", "--model", str(tiny_bert), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_page_holds_every_layer_and_head_and_needs_no_network(tiny_bert: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertForPreTraining

    out = tmp_path / "view.html"
    report = _write_page(tiny_bert, out, STORY[0], "--second", STORY[1])
    assert "2 layers × 4 heads" in report
    page = out.read_text(encoding="utf-8")
    data = _page_data(page)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    enc = tok(STORY[0], STORY[1], return_tensors="pt")
    assert data["tokens"] == tok.convert_ids_to_tokens(enc["input_ids"][0])
    assert data["token_type_ids"] == enc["token_type_ids"][0].tolist()
    att = np.array(data["attention"])
    T = len(data["tokens"])
    assert att.shape == (2, 4, T, T)
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=4e-3)  # rows are distributions (3 decimals kept)

    # The same weights as transformers' eager attention.
    model = BertForPreTraining.from_pretrained(tiny_bert, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = torch.stack(model(**enc, output_attentions=True).attentions)[:, 0].numpy()
    np.testing.assert_allclose(att, ref, atol=6e-4)

    # Self-contained: no external scripts, styles, images or fetches (the SVG namespace URI is not a request).
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page)
    assert "fetch(" not in page and "XMLHttpRequest" not in page and "@import" not in page
    assert "default-src 'none'" in page


def test_text_cannot_break_out_of_the_page(tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "evil.html"
    text = "the cat </script><script>alert(1)</script> <!-- sat"
    _write_page(tiny_bert, out, text)
    page = out.read_text(encoding="utf-8")
    assert page.count("</script>") == 2  # the data block's and the code's own
    assert "<script>alert" not in page
    assert _page_data(page)["title"] == text


def test_png_heatmaps_one_per_layer(tiny_bert: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "view.html"
    report = _write_page(tiny_bert, out, "--png", STORY[2])
    pngs = sorted(tmp_path.glob("view-layer*.png"))
    assert [p.name for p in pngs] == ["view-layer01.png", "view-layer02.png"]
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(p) in report
    _write_page(tiny_bert, out, "--png", "--overwrite", STORY[3])  # our PNGs carry our mark: replaced
    pngs[1].write_bytes(b"\x89PNG\r\n\x1a\n my own figure")  # a PNG of the user's where one goes
    result = runner.invoke(app, ["attention", "--model", str(tiny_bert), "--out", str(out), "--png", "--overwrite",
                                 STORY[2]])
    assert result.exit_code == 2 and f"'{pngs[1]}' was not written by `bert attention`" in result.stderr
    assert pngs[1].read_bytes().endswith(b"my own figure")
    # PNGs of bertcli before the mark carry matplotlib's own Software text: still replaced, as ours
    import matplotlib.pyplot as plt

    fig = plt.figure()
    fig.savefig(pngs[1], format="png")  # matplotlib's default metadata, as an older bert attention wrote
    plt.close(fig)
    _write_page(tiny_bert, out, "--png", "--overwrite", STORY[2])
    assert b"bertcli attention" in pngs[1].read_bytes()[:65536]
    # Only STEM-layerNN.png counts as a layer PNG, and a stem's glob characters are taken as they are
    (tmp_path / "view-layer-notes.png").write_bytes(b"mine")
    _write_page(tiny_bert, out, "--png", "--overwrite", STORY[2])
    odd = tmp_path / "a[1].html"
    users = tmp_path / "a[1]-layer01.png"
    users.write_bytes(b"\x89PNG\r\n\x1a\n MINE")
    for extra in ([], ["--overwrite"]):
        result = runner.invoke(app, ["attention", "--model", str(tiny_bert), "--out", str(odd), "--png", *extra,
                                     STORY[2]])
        assert result.exit_code == 2 and str(users) in result.stderr, result.stderr
    assert users.read_bytes().endswith(b"MINE") and (tmp_path / "view-layer-notes.png").read_bytes() == b"mine"


def test_existing_output_needs_overwrite(tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "view.html"
    out.write_text("keep me")
    result = runner.invoke(app, ["attention", "--model", str(tiny_bert), "--out", str(out), STORY[0]])
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert out.read_text() == "keep me"
    # --overwrite replaces only what `bert attention` wrote: the user's page stays, with or without it
    result = runner.invoke(app, ["attention", "--model", str(tiny_bert), "--out", str(out), "--overwrite", STORY[0]])
    assert result.exit_code == 2 and "was not written by `bert attention`" in result.stderr
    assert out.read_text() == "keep me"
    out.unlink()
    _write_page(tiny_bert, out, STORY[0])
    _write_page(tiny_bert, out, "--overwrite", STORY[1])  # our own page: replaced
    assert "attention-data" in out.read_text() and _page_data(out.read_text())["tokens"] != []
    # A directory where a PNG goes: named before anything is written (it was a hidden temporary's name, after the
    # page and the first PNG had been replaced).
    blocker = tmp_path / "view-layer02.png"
    blocker.mkdir()
    (blocker / "keep.txt").write_text("mine")
    before = out.read_text()
    result = runner.invoke(app, ["attention", "--model", str(tiny_bert), "--out", str(out), "--png", "--overwrite",
                                 STORY[1]])
    assert result.exit_code == 2 and f"'{blocker}' is a directory" in result.stderr
    assert out.read_text() == before and (blocker / "keep.txt").read_text() == "mine"
    assert not list(tmp_path.glob("view-layer01.png")) and not list(tmp_path.glob(".*"))


def test_long_text_is_truncated_with_a_warning(tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "long.html"
    result = runner.invoke(app, ["attention", "--model", str(tiny_bert), "--out", str(out), " ".join(STORY * 3)])
    assert result.exit_code == 0, result.output
    assert "truncated to 40" in result.stderr
    data = _page_data(out.read_text(encoding="utf-8"))
    assert len(data["tokens"]) == 40 and data["truncated"] is True


def _chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={user_dir}", "--window-size=1200,900",
    ]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_page_renders_in_headless_chromium(tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "view.html"
    _write_page(tiny_bert, out, STORY[0], "--second", STORY[1])
    T = len(_page_data(out.read_text(encoding="utf-8"))["tokens"])

    # The DOM after the page's script ran: every token in both columns, and attention lines between them.
    dom = _chromium("--dump-dom", out.as_uri(), user_dir=tmp_path / "profile1").stdout
    assert 'data-ready="1"' in dom
    assert len(re.findall(r'<g class="token left', dom)) == T
    assert len(re.findall(r'<g class="token right', dom)) == T
    lines = len(re.findall(r"<line ", dom))
    assert lines >= T  # every row of a head's attention has at least one weight >= 1/T
    assert ">sat<" in dom and ">park<" in dom
    # A focused token (as on hover) shows only its own lines.
    focused = _chromium("--dump-dom", out.as_uri() + "#layer=2&head=1&focus=2", user_dir=tmp_path / "p2").stdout
    assert 0 < len(re.findall(r"<line ", focused)) <= T
    assert len(set(re.findall(r'data-from="(\d+)"', focused))) == 1

    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", out.as_uri() + "#focus=2", user_dir=tmp_path / "profile3")
    assert shot.is_file()
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (900, 1200)
    blueish = (pixels[..., 2] > pixels[..., 0] + 40).sum()  # the attention lines and thumbnails are blue
    assert blueish > 2000
    keep = os.environ.get("BERTCLI_KEEP_SCREENSHOT")  # a path, to look at the page as the browser drew it
    if keep:
        shutil.copy(shot, keep)
