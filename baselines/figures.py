"""Figures 3 and 4 of the paper from a trained HHMPN run kept by the harness, as PNG and PDF.

Figure 3: F2L attention (eq. 11, last round) of one song's comment sentences to every label, each
sentence's text beside its row as in the paper. The sentences are Chinese: the figure is set in Noto Sans
CJK, which the project installs from PyPI (``noto-cjk-sans-otc`` in requirements.txt) and registers with
matplotlib from the package's own file, so no system font is assumed. The colour is the attention times
the song's number of sentences: 1 (white) is what uniform attention gives every sentence, red is more,
blue less, so a uniform map looks uniform whatever the number of sentences.
Figure 4: L2L attention (eq. 13, last round) averaged over the test set and the modalities: the learned
label-dependency heatmap.
Both titles name the data as every table does (``nemu.provenance.dataset_title``: a synthetic sample is "NEMu
sample (synthetic, N songs)", never NEMu).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from baselines.tables import full_modalities
from mmer.engine import make_loaders, move_batch
from mmer.predict import load_run
from mmer.runner import data_info
from nemu.loading import load
from nemu.provenance import dataset_title
from nemu.shards import read_manifest
from nemu.splits import cv_rotation

FIGURE_FORMATS = ("png", "pdf")
CJK_FAMILY = "Noto Sans CJK SC"  # the Simplified Chinese face of the collection
MAX_SENTENCES = 16
TEXT_CHARS = 28  # characters of a sentence shown beside its row (the whole sentence is in figure3.md)


def cjk_font() -> Path:
    """Register the packaged Noto Sans CJK collection with matplotlib; returns the font file.

    Raises RuntimeError naming the package when it is not installed (``pip install -r requirements.txt``)."""
    from matplotlib import font_manager

    try:
        import noto_cjk_sans_otc
    except ImportError:
        raise RuntimeError("Figure 3 needs a CJK font: the package noto-cjk-sans-otc is not installed "
                           "(pip install -r requirements.txt)") from None
    path = Path(str(noto_cjk_sans_otc.FONT_PATH))
    if not any(entry.fname == str(path) for entry in font_manager.fontManager.ttflist):
        font_manager.fontManager.addfont(str(path))
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    paths = []
    for suffix in FIGURE_FORMATS:
        path = out_dir / f"{stem}.{suffix}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    return paths


def _model_and_test(record: dict, root: Path):
    """The record's trained model (its run folder), its rotation's test split (normalised as in training) and a
    loader for any other split (``all_songs``)."""

    loaded = load_run(Path(record["run_dir"]), "cpu")
    test = loaded.dataset(root, split=None, folds=cv_rotation(record["fold"])["test"])
    datasets = {"train": loaded.dataset(root, split=None, folds=cv_rotation(record["fold"])["train"])}
    info = data_info(record["dataset"], root, datasets)
    return loaded.model.eval(), test, info, lambda: loaded.dataset(root, split=None)


@torch.no_grad()
def _outputs(model, dataset, batch_size: int = 64) -> tuple[list[str], list[dict], list[dict]]:
    ids, outputs, batches = [], [], []
    for batch in make_loaders({"test": dataset}, batch_size, seed=0)["test"]:
        batch = move_batch(batch, "cpu")
        outputs.append(model(batch))
        batches.append(batch)
        ids.extend(batch["ids"])
    return ids, outputs, batches


def figure4(model, dataset, info, out_dir: Path, data_title: str = "") -> list[Path]:
    plt = _pyplot()
    _, outputs, _ = _outputs(model, dataset)
    maps = []
    for out in outputs:
        if out["l2l_attention"] is None:
            raise ValueError("this model has no L2L module (w/o L2L ablation)")
        per_modality = torch.stack([a[:, -1] for a in out["l2l_attention"].values()])  # (M, B, L, L), last round
        maps.append(per_modality.mean(0))
    heat = torch.cat(maps).mean(0).numpy()
    labels = info.label_names
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    image = ax.imshow(heat, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("sending label j")
    ax.set_ylabel("receiving label i")
    ax.set_title("L2L attention (eq. 13, last round), test-set mean" + (f"\n{data_title}" if data_title else ""))
    fig.colorbar(image, ax=ax, fraction=0.046)
    paths = _save(fig, out_dir, "figure4_l2l")
    plt.close(fig)
    np.savetxt(out_dir / "figure4_l2l.csv", heat, delimiter=",", fmt="%.5f", header=",".join(labels))
    return paths


def _song_attention(model, dataset, modality: str, song: str | None, max_sentences: int):
    """(song id, attention (L, S) over all its sentences, true label vector) for ``song``, or the default
    choice: a song whose sentences all fit (at most ``max_sentences``), the most sentences, two or more labels
    preferred, smallest id on ties.
    None when ``song`` is not in ``dataset``."""
    best = None
    ids, outputs, batches = _outputs(model, dataset)
    for out, batch in zip(outputs, batches):
        counts = batch["masks"][modality].sum(1)
        for row, song_id in enumerate(batch["ids"]):
            count = int(counts[row])
            if song is not None and song_id != song:
                continue
            if song is None and count < 2:
                continue  # one sentence has nothing to compare with
            # every sentence shown first, then more sentences, then two or more labels
            score = (count <= max_sentences, min(count, max_sentences), int(batch["labels"][row].sum() >= 2))
            attention = out["f2l_attention"][modality][row, -1, :, :count]  # (L, S), last round
            candidate = (score, song_id, attention.numpy(), batch["labels"][row].numpy())
            if song is not None:
                return candidate[1:]
            if best is None or score > best[0] or (score == best[0] and song_id < best[1]):
                best = candidate
    return None if best is None else best[1:]


def attention_norm(relative: np.ndarray):
    """The colour scale of Figure 3 for attention × number of sentences: white at 1 (uniform attention), blue
    down to 0, red up to the largest value shown (at least 2), whatever the song's number of sentences."""
    from matplotlib.colors import TwoSlopeNorm

    return TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=max(2.0, float(np.max(relative))))


def _shorten(text: str, limit: int = TEXT_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def figure3(model, dataset, info, root: Path, out_dir: Path, modality: str = "comments",
            max_sentences: int = MAX_SENTENCES, song: str | None = None, all_songs=None,
            data_title: str = "") -> list[Path]:
    """F2L attention of one song's ``modality`` sentences, each row labelled with its sentence's text.

    ``song`` (an id) is looked up in ``dataset`` (the run's test songs) and then in ``all_songs()`` (a
    dataset of every song, normalised as in training), and named as a training song when it is not a test
    song. Without ``song``: the default choice of :func:`_song_attention` among the test songs."""
    if modality not in info.modality_dims:
        raise ValueError(f"figure 3 needs the {modality!r} modality")
    where = "test song"
    found = _song_attention(model, dataset, modality, song, max_sentences)
    if found is None and song is not None and all_songs is not None:
        found, where = _song_attention(model, all_songs(), modality, song, max_sentences), "not a test song"
    if found is None:
        raise ValueError(f"--figure-song {song!r}: no such song in {root}" if song is not None else
                         f"figure 3: no test song in {root} has two or more {modality} sentences")
    song_id, attention, truth = found
    total = attention.shape[1]
    if total == 0:
        raise ValueError(f"--figure-song {song_id!r} has no {modality} sentence to show")
    relative = attention * total  # 1 = the share uniform attention gives each sentence
    shown = relative[:, :max_sentences]
    texts = list(load(root, None, columns=["id", f"{modality}_text"]).set_index("id").loc[song_id,
                                                                                          f"{modality}_text"])
    labels = info.label_names
    cjk_font()
    plt = _pyplot()
    with plt.rc_context({"font.family": [CJK_FAMILY], "axes.unicode_minus": False}):
        fig, ax = plt.subplots(figsize=(9.5, 0.38 * shown.shape[1] + 2.6))
        image = ax.imshow(shown.T, cmap="RdBu_r", aspect="auto", norm=attention_norm(shown))
        ax.set_xticks(range(len(labels)), [f"{n}*" if truth[i] else n for i, n in enumerate(labels)],
                      rotation=60, ha="right")
        ax.set_yticks(range(shown.shape[1]),
                      [f"{i + 1}) {_shorten(texts[i]) if i < len(texts) else ''}" for i in range(shown.shape[1])])
        ax.set_title(f"F2L attention (eq. 11, last round) of song {song_id}'s {modality} ({where}); * true label"
                     + (f"; first {max_sentences} of {total} sentences" if total > max_sentences else "")
                     + (f"\n{data_title}" if data_title else ""),
                     fontsize=9)
        bar = fig.colorbar(image, ax=ax, fraction=0.046)
        bar.set_label(f"attention × {total} sentences (1 = uniform)")
        paths = _save(fig, out_dir, "figure3_f2l")
        plt.close(fig)
    strongest = {labels[i]: int(np.argmax(attention[i])) + 1 for i in range(len(labels)) if truth[i]}
    lines = [f"# Figure 3: F2L attention of song {song_id}'s {modality} sentences ({where})"
             + (f", {data_title}" if data_title else ""), "",
             f"True labels: {', '.join(n for i, n in enumerate(labels) if truth[i])}. Colour: attention × "
             f"{total} (the number of sentences), so 1 is uniform attention.",
             "Most attended sentence per true label: " + ", ".join(f"{k} → {v})" for k, v in strongest.items()), "",
             "![figure 3](figure3_f2l.png)", ""]
    lines += [f"{i + 1}) {text}" for i, text in enumerate(texts[: shown.shape[1]])]
    (out_dir / "figure3.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def write_figures(records: list[dict], roots: dict[str, Path], out_dir: Path, song: str | None = None) -> list[Path]:
    """Figures from the first HHMPN run (lowest fold and seed) on all modalities of a dataset with comments.

    The model comes from the record's run folder (``run_dir``)."""
    for record in sorted(records, key=lambda r: (r["fold"], r["seed"], r["dataset"])):
        if record["model"] != "HHMPN" or record.get("status") != "ok" or "comments" not in record["modalities"]:
            continue
        root = roots.get(record["dataset"])
        has_run = bool(record.get("run_dir")) and (Path(record["run_dir"]) / "run.json").is_file()
        if root is None or not has_run:
            continue
        if len(record["modalities"]) < len(full_modalities(records, record["dataset"])):
            continue  # a Table 3 subset run
        model, test, info, all_songs = _model_and_test(record, root)
        title = dataset_title(read_manifest(root))
        return (figure3(model, test, info, root, out_dir, song=song, all_songs=all_songs, data_title=title)
                + figure4(model, test, info, out_dir, data_title=title))
    return []
