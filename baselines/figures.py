"""Figures 3 and 4 of the paper from a trained HHMPN checkpoint kept by the harness.

Figure 3: F2L attention (eq. 11, last round) of one test song's comment sentences to every label.
Figure 4: L2L attention (eq. 13, last round) averaged over the test set and the modalities: the
learned label-dependency heatmap.

The sentences of Figure 3 are Chinese; matplotlib here has no CJK font, so the figure numbers them
and ``figure3.md`` lists the numbered sentences beside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from baselines.registry import get
from baselines.runner import data_info
from hhmpn.engine import load_checkpoint, make_loaders, move_batch
from nemu.loading import load, split_datasets


def _model_and_test(record: dict, root: Path, checkpoint: Path):
    datasets = split_datasets(root, record["fold"], None)
    info = data_info(record["dataset"], root, datasets)
    model = load_checkpoint(get(record["model"]).factory(record["settings"], info), checkpoint, "cpu")
    return model.eval(), datasets["test"], info


@torch.no_grad()
def _outputs(model, dataset, batch_size: int = 64) -> tuple[list[str], list[dict], list[dict]]:
    ids, outputs, batches = [], [], []
    for batch in make_loaders({"test": dataset}, batch_size, seed=0)["test"]:
        batch = move_batch(batch, "cpu")
        outputs.append(model(batch))
        batches.append(batch)
        ids.extend(batch["ids"])
    return ids, outputs, batches


def figure4(model, dataset, info, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    ax.set_title("L2L attention (eq. 13, last round), test-set mean")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = out_dir / "figure4_l2l.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    np.savetxt(out_dir / "figure4_l2l.csv", heat, delimiter=",", fmt="%.5f", header=",".join(labels))
    return path


def figure3(model, dataset, info, root: Path, out_dir: Path, modality: str = "comments",
            max_sentences: int = 16) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if modality not in info.modality_dims:
        raise ValueError(f"figure 3 needs the {modality!r} modality")
    ids, outputs, batches = _outputs(model, dataset)
    # The test song with the most comment sentences (up to max_sentences) among those with 2+ labels.
    best = None
    for out, batch in zip(outputs, batches):
        counts = batch["masks"][modality].sum(1)
        for row in range(len(batch["ids"])):
            score = (min(int(counts[row]), max_sentences), int(batch["labels"][row].sum() >= 2))
            if best is None or score > best[0]:
                attention = out["f2l_attention"][modality][row, -1, :, : int(counts[row])]  # (L, S), last round
                best = (score, batch["ids"][row], attention.numpy(), batch["labels"][row].numpy())
    _, song_id, attention, truth = best
    attention = attention[:, :max_sentences]
    texts = load(root, None, columns=["id", f"{modality}_text"]).set_index("id").loc[song_id, f"{modality}_text"]
    labels = info.label_names
    fig, ax = plt.subplots(figsize=(8, 0.35 * attention.shape[1] + 2))
    image = ax.imshow(attention.T, cmap="Reds", aspect="auto")
    ax.set_xticks(range(len(labels)), [f"{n}*" if truth[i] else n for i, n in enumerate(labels)],
                  rotation=60, ha="right")
    ax.set_yticks(range(attention.shape[1]), [f"{i + 1})" for i in range(attention.shape[1])])
    ax.set_ylabel(f"{modality} sentence")
    ax.set_title(f"F2L attention (eq. 11, last round), song {song_id}; * true labels")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = out_dir / "figure3_f2l.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    top = {labels[i]: int(np.argmax(attention[i])) + 1 for i in range(len(labels)) if truth[i]}
    lines = [f"# Figure 3: F2L attention of song {song_id}'s {modality} sentences", "",
             f"True labels: {', '.join(n for i, n in enumerate(labels) if truth[i])}.",
             "Most attended sentence per true label: " + ", ".join(f"{k} → {v})" for k, v in top.items()), "",
             "![figure 3](figure3_f2l.png)", ""]
    lines += [f"{i + 1}) {text}" for i, text in enumerate(list(texts)[: attention.shape[1]])]
    (out_dir / "figure3.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_figures(records: list[dict], roots: dict[str, Path], checkpoint_dir: Path, out_dir: Path) -> list[Path]:
    """Figures from the first HHMPN checkpoint (lowest fold and seed) of a dataset with comments."""
    written = []
    for record in sorted(records, key=lambda r: (r["fold"], r["seed"])):
        if record["model"] != "HHMPN" or record.get("status") != "ok":
            continue
        checkpoint = checkpoint_dir / record["dataset"] / "HHMPN" / f"fold{record['fold']}-seed{record['seed']}.pt"
        root = roots.get(record["dataset"])
        if root is None or not checkpoint.is_file() or "comments" not in record["modalities"]:
            continue
        model, test, info = _model_and_test(record, root, checkpoint)
        written += [figure3(model, test, info, root, out_dir), figure4(model, test, info, out_dir)]
        break
    return written
