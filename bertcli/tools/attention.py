"""`bert attention`: every layer's and head's attention as a self-contained HTML page, and PNG heatmaps."""

from __future__ import annotations

import glob
import html
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from bertcli.errors import InputError, OutputExistsError, warn
from bertcli.model_dir import LoadedModel, check_two_segments, load_model
from bertcli.textio import check_unicode
from bertcli.tools.predict import encode_texts, pad_batch

# Weights are shown to 3 decimals: enough for opacity, and keeps a 12×12-head page at 128 tokens near 10 MB.
DECIMALS = 3
# In every page (the template's opening comment) and PNG (its Software field) this command writes: --overwrite
# replaces only files that carry it.
MARK = "bertcli attention"


def compute_attention(loaded: LoadedModel, text: str, second: str | None = None) -> dict:
    """Tokens and the attention of every layer and head: attention has shape (layers, heads, T, T), rows sum to 1."""
    import torch

    if not text.strip():
        raise InputError("the text is empty", hint='pass a sentence, e.g. "The cat sat on the mat."')
    check_unicode(text, "the text")
    if second is not None:
        check_unicode(second, "the second text")
    if loaded.model.config._attn_implementation != "eager":
        raise InputError("the model must be loaded with attentions=True to return attention weights")
    full = loaded.tokenizer(text, second, add_special_tokens=True)
    enc = encode_texts(loaded, [text], [second] if second is not None else None, what=lambda i: "the text")
    truncated = len(full["input_ids"]) > len(enc["input_ids"][0])
    batch = pad_batch(loaded, enc)
    with torch.inference_mode():
        out = loaded.model.bert(**batch, output_attentions=True)
    attention = torch.stack([a[0] for a in out.attentions]).float().cpu().numpy()  # (L, H, T, T)
    ids = enc["input_ids"][0]
    special = loaded.special_ids
    return {
        "tokens": loaded.tokenizer.convert_ids_to_tokens(ids),
        "token_type_ids": list(enc["token_type_ids"][0]) if "token_type_ids" in enc else [0] * len(ids),
        "special_positions": [i for i, t in enumerate(ids) if t in special],
        "attention": attention,
        "truncated": truncated,
    }


def render_html(result: dict, title: str, model_name: str = "") -> str:
    """The attention page: the template with the data embedded as JSON (no network access needed)."""
    template = resources.files("bertcli").joinpath("templates/attention.html").read_text(encoding="utf-8")
    data = {
        "title": title,
        "model": model_name,
        "tokens": result["tokens"],
        "token_type_ids": [int(t) for t in result["token_type_ids"]],
        "special_positions": result["special_positions"],
        "truncated": bool(result["truncated"]),
        "attention": np.round(result["attention"], DECIMALS).tolist(),
    }
    # "</script>" or "<!--" in the text would end or confuse the <script> element: no raw < > & in the JSON at all.
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return template.replace("__TITLE__", html.escape(title)).replace("__DATA__", blob)


def save_pngs(result: dict, out_stem: Path) -> list[Path]:
    """One PNG per layer, a heatmap per head (row: from token, column: to token). Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise InputError(
            "--png needs matplotlib, which is not installed", hint="pip install 'bertcli[plot]' (or matplotlib)"
        ) from exc
    attention = result["attention"]  # (L, H, T, T)
    tokens = result["tokens"]
    num_layers, num_heads, T, _ = attention.shape
    cols = min(num_heads, 4)
    rows = (num_heads + cols - 1) // cols
    show_labels = T <= 40  # beyond that the labels overlap into a grey smear
    cell = max(2.6, min(5.0, 0.12 * T))
    paths = []
    for layer in range(num_layers):
        fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, cell * rows + 0.4), squeeze=False)
        for h in range(rows * cols):
            ax = axes[h // cols][h % cols]
            if h >= num_heads:
                ax.axis("off")
                continue
            ax.imshow(attention[layer, h], cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"head {h + 1}", fontsize=9)
            if show_labels:
                ax.set_xticks(range(T), tokens, rotation=90, fontsize=6)
                ax.set_yticks(range(T), tokens, fontsize=6)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
        fig.suptitle(f"layer {layer + 1} (row: from, column: to)", fontsize=11)
        fig.tight_layout()
        path = out_stem.with_name(f"{out_stem.name}-layer{layer + 1:02d}.png")
        _write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png", metadata={"Software": MARK}))
        plt.close(fig)
        paths.append(path)
    return paths


def _layer_pngs(stem: Path) -> list[Path]:
    """The files named as `--png` names its heatmaps (STEM-layerNN.png), the stem's glob characters taken literally."""
    return sorted(stem.parent.glob(f"{glob.escape(stem.name)}-layer[0-9][0-9].png"))


def _written_by_us(path: Path) -> bool:
    """Whether a page or PNG carries our mark: the page's opening comment, the PNG's Software text chunk (both come
    before the data, in the first few hundred bytes). bertcli before the mark left matplotlib's own Software text
    in the layer PNGs it wrote, so a PNG of our name with that text counts as ours too."""
    with open(path, "rb") as f:
        head = f.read(65536)
    return MARK.encode() in head or (path.suffix == ".png" and b"Software\x00Matplotlib version" in head)


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_attention(
    model: str | Path,
    text: str,
    out: str | Path = "attention.html",
    second: str | None = None,
    png: bool = False,
    overwrite: bool = False,
    device: str = "auto",
) -> dict:
    """Write the attention page (and PNGs with png=True); returns the written paths and the shape."""
    out_path = Path(out)
    if out_path.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"--out '{out_path}': expected a .html file name", hint="e.g. --out attention.html")
    stem = out_path.with_suffix("")
    layer_pngs = _layer_pngs(stem)  # what --png writes (and what an earlier --png of this page wrote)
    in_the_way = [p for p in [out_path, *layer_pngs] if p.exists() and not p.is_file()]
    if in_the_way:  # --overwrite replaces files only; found here, before any output is written
        raise OutputExistsError(f"'{in_the_way[0]}' is a directory (or not a regular file), where an output goes",
                                hint="move it away, or choose another --out")
    if out_path.exists() and not overwrite:
        raise OutputExistsError(f"'{out_path}' exists", hint="pass --overwrite to replace it, or another --out")
    if overwrite:  # --overwrite replaces what `bert attention` wrote, never a file of the user's
        ours = [out_path, *(layer_pngs if png else [])]
        foreign = [p for p in ours if p.is_file() and not _written_by_us(p)]
        if foreign:
            raise OutputExistsError(f"'{foreign[0]}' was not written by `bert attention`, so --overwrite leaves it",
                                    hint="move it away, or choose another --out")
    if not out_path.parent.exists():
        raise InputError(f"--out '{out_path}': the directory '{out_path.parent}' does not exist",
                         hint="create it first, or write the page elsewhere")
    if png:
        existing = layer_pngs
        if existing and not overwrite:
            raise OutputExistsError(f"'{existing[0]}' exists", hint="pass --overwrite to replace the PNGs")
    loaded = load_model(model, device=device, attentions=True)
    check_two_segments(loaded.model.config, loaded.path, needed=second is not None)
    result = compute_attention(loaded, text, second)
    num_values = result["attention"].size
    if num_values > 20_000_000:  # ~5 bytes a weight in the page; browsers get slow beyond ~100 MB
        warn(f"{num_values:,} attention weights make a page of about {num_values * 5 // 1_000_000} MB; "
             "a shorter text gives a page that opens faster")
    title = text if second is None else f"{text} ‖ {second}"
    page = render_html(result, title=title, model_name=str(loaded.path))
    _write_atomic(out_path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    pngs = save_pngs(result, out_path.with_suffix("")) if png else []
    num_layers, num_heads, num_tokens, _ = result["attention"].shape
    return {
        "html": str(out_path),
        "png": [str(p) for p in pngs],
        "layers": num_layers,
        "heads": num_heads,
        "tokens": result["tokens"],
        "truncated": result["truncated"],
    }
