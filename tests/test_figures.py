"""Figures 3 and 4: PNG and PDF, Figure 3 set in the packaged CJK font with each sentence's text, for the song
a flag names, on a colour scale where uniform attention is the neutral colour."""

from __future__ import annotations

import json

import numpy as np
import pytest

from baselines import run_all
from baselines.figures import CJK_FAMILY, attention_norm, cjk_font


def test_the_cjk_font_comes_from_the_package_and_covers_chinese():
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = cjk_font()
    assert "site-packages" in str(path) and path.is_file()  # installed by requirements.txt, not a system font
    found = font_manager.findfont(font_manager.FontProperties(family=CJK_FAMILY), fallback_to_default=False)
    assert found == str(path)
    charmap = FT2Font(str(path)).get_charmap()
    assert all(ord(ch) in charmap for ch in "伤感治愈思念满满的回忆")


def test_uniform_attention_gets_the_neutral_colour():
    for sentences in (2, 5, 16):
        relative = np.full((12, sentences), 1.0 / sentences) * sentences  # uniform attention x n
        norm = attention_norm(relative)
        assert np.allclose(norm(relative), 0.5)  # the diverging map's centre (white in RdBu_r)
    skewed = np.array([[0.0, 3.0]])
    assert attention_norm(skewed)(0.0) == 0.0 and attention_norm(skewed)(3.0) == 1.0


@pytest.fixture(scope="module")
def hhmpn_results(built, tmp_path_factory):
    base, _, _ = built
    out = tmp_path_factory.mktemp("figures")
    summary = run_all.run({"nemu": base / "out"}, ["HHMPN"], [0], [0], "quick", out, table3=False,
                          progress=False)
    assert summary["failed"] == 0
    return base / "out", out, summary


def test_figures_are_written_as_png_and_pdf_with_sentence_texts(hhmpn_results):
    _, out, summary = hhmpn_results
    for stem in ("figure3_f2l", "figure4_l2l"):
        for suffix in ("png", "pdf"):
            path = out / f"{stem}.{suffix}"
            assert path in summary["figures"] and path.stat().st_size > 1000
    assert (out / "figure3_f2l.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pdf = (out / "figure3_f2l.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and b"NotoSansCJK" in pdf  # the CJK face is the one embedded
    listing = (out / "figure3.md").read_text(encoding="utf-8")
    assert "(test song)" in listing and "1) " in listing


def test_figure_song_flag_chooses_the_song(hhmpn_results, built):
    from baselines.figures import write_figures
    from baselines.results import ResultsStore

    root, out, _ = hhmpn_results
    _, records, _ = built
    ids = [json.loads(line)["id"] for line in (built[0] / "raw" / "records.jsonl").read_text().splitlines()]
    stored = ResultsStore(out, "quick").records()
    chosen = sorted(ids)[-1]
    write_figures(stored, {"nemu": root}, out, song=chosen)
    listing = (out / "figure3.md").read_text(encoding="utf-8")
    assert f"song {chosen}'s comments" in listing
    from nemu.provenance import dataset_title
    from nemu.shards import read_manifest

    assert listing.splitlines()[0].endswith(", " + dataset_title(read_manifest(root)))  # the data, named as captions do
    with pytest.raises(ValueError, match="no such song"):
        write_figures(stored, {"nemu": root}, out, song="no-such-song")
