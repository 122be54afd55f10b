"""The dataset card of a built dataset, ``OUT/README.md``, after the Hugging Face dataset-card template.

``README.md`` is the file Hugging Face ``datasets`` (and the Hub) read: its YAML header (configs with the
data files of each split, ``dataset_info`` with the features and each split's size, the licence) makes
``datasets.load_dataset(OUT)`` open the folder as it is, with splits train / validation / test. The
header and every number in the card come from the build's manifest and shard schema, so the card cannot
drift from the shards it describes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import yaml

from nemu.atomic import atomic_write_text
from nemu.shards import hf_features
from nemu.splits import HF_SPLIT_NAMES, SPLITS
from nemu.statistics import PAPER_TABLE1

DESCRIPTIONS = {
    "NEMu": (
        "NEMu (NetEase Music) is the multi-modal multi-label emotion dataset of Zhang et al., AAAI 2021 "
        "(HHMPN). Each sample is a song from NetEase Cloud Music with four modalities: lyrics, user comments, "
        "audio and images (cover and posters), labelled with the emotion tags among NetEase's 12-tag emotion "
        "group. The comments and lyrics are partial time series: comments are independent of one another."
    ),
    "MOSEI": (
        "CMU-MOSEI (CMU Multimodal Opinion Sentiment and Emotion Intensity; Zadeh et al., ACL 2018) is the "
        "paper's second dataset: sentence-level segments of English YouTube monologues with three modalities, "
        "text (GloVe word vectors), audio (COVAREP) and vision (FACET 4.2), and six emotions (happy, sad, anger, "
        "surprise, disgust, fear) annotated as intensities in [0, 3]; an emotion is present when its intensity is "
        "above 0, so a segment can have several or none. Features come from the files the user holds (SDK "
        "computational sequences, the aligned train_valid_test.pt, or the unaligned pkl); see the settings below."
    ),
}

# Dataset-specific wording of the card's fixed sections; a dataset without an entry (NEMu) gets NEMu's.
SECTIONS = {
    "MOSEI": {
        "duration": "segment length in seconds; null where the source has no times",
        "annotations": "Labels are crowd-sourced emotion intensities (three annotators per segment, averaged) from "
                       "CMU-MOSEI; an emotion is present when its intensity is above 0. Segments without any "
                       "emotion are kept, as in the paper's Table 1.",
        "personal": "Only pre-extracted features are kept (word vectors, acoustic and facial descriptors), with "
                    "YouTube video ids and segment times where the source has them; no video, audio or text.",
        "uses": "For research on multi-modal multi-label emotion recognition. The label distribution is imbalanced "
                "(see the label table). Respect CMU-MOSEI's terms of use.",
        "citation": "AmirAli Bagher Zadeh, Paul Pu Liang, Soujanya Poria, Erik Cambria, Louis-Philippe Morency.\n"
                    "Multimodal Language Analysis in the Wild: CMU-MOSEI Dataset and Interpretable Dynamic Fusion "
                    "Graph. ACL 2018.\n\nDong Zhang, Xincheng Ju, Wei Zhang, Junhui Li, Shoushan Li, Qiaoming Zhu, "
                    "Guodong Zhou. Multi-modal\nMulti-label Emotion Recognition with Heterogeneous Hierarchical "
                    "Message Passing. AAAI 2021.",
    },
}


def _curation_counts(counts: dict) -> str:
    """Counts of a build without NEMu's input/kept/quarantined bookkeeping, one line each."""
    return "Counts:\n\n" + "\n".join(
        f"- {key}: {value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}"
        for key, value in counts.items())


CARD_FILE = "README.md"

# license: other needs a license_name (the Hub's rule); the card's text says what it means
LICENCES = {
    "NEMu": {"license_name": "nemu-research-only",
             "text": "The raw content (lyrics, comments, audio, images) belongs to its rights holders on NetEase "
                     "Cloud Music; the features and labels are for non-commercial research use only."},
    "MOSEI": {"license_name": "cmu-mosei-terms",
              "text": "CMU-MOSEI's terms of use apply to the features and labels (see the CMU-MultimodalSDK)."},
}


def _yaml_feature(feature: dict):
    """datasets' serialised feature (Features.to_dict form) in the dataset card's YAML form."""
    kind = feature["_type"]
    if kind == "Value":
        return {"dtype": feature["dtype"]}
    if kind == "ClassLabel":
        return {"class_label": {"names": {str(i): name for i, name in enumerate(feature["names"])}}}
    inner = _yaml_feature(feature["feature"])
    # "sequence" (not datasets >= 4's "list"): every datasets release reads it, lengths included
    out = {"sequence": inner["dtype"] if set(inner) == {"dtype"} else inner}
    if "length" in feature:
        out["length"] = feature["length"]
    return out


def _split_bytes(folder: Path | None, entries: list[dict]) -> int:
    return sum(int(entry["bytes"]) if "bytes" in entry else (Path(folder) / entry["path"]).stat().st_size
               for entry in entries) if folder is not None else 0


def card_metadata(manifest: dict, schema: pa.Schema | None = None, folder: Path | None = None) -> dict:
    """The card's YAML header as a dict: licence, configs (one data_files entry per split, under the names
    datasets uses: train, validation, test) and dataset_info (features from the shard schema, and each
    split's num_examples and num_bytes, the shards' size on disk)."""
    name = manifest["dataset"]
    splits = [s for s in SPLITS if s in manifest["shards"]] + [s for s in manifest["shards"] if s not in SPLITS]
    info: dict = {"config_name": "default"}
    features = hf_features(schema, manifest["labels"]) if schema is not None else {}
    if schema is not None and len(features) == len(schema):
        # all columns or none: datasets casts the shards to the card's features, so a column missing from
        # them (a type datasets has no feature for) would fail the load; without them it reads the shards'
        info["features"] = [{"name": column, **_yaml_feature(feature)} for column, feature in features.items()]
    sizes = {split: _split_bytes(folder, manifest["shards"][split]) for split in splits}
    info["splits"] = [{"name": HF_SPLIT_NAMES.get(split, split), "num_bytes": sizes[split],
                       "num_examples": sum(int(entry["rows"]) for entry in manifest["shards"][split])}
                      for split in splits]
    info["download_size"] = info["dataset_size"] = sum(sizes.values())
    return {
        "pretty_name": name,
        "license": "other",
        "license_name": LICENCES.get(name, LICENCES["NEMu"])["license_name"],
        "language": ["zh" if name == "NEMu" else "en"],
        "task_categories": ["audio-classification", "text-classification", "image-classification"],
        "tags": ["emotion-recognition", "multi-label", "multi-modal"],
        "configs": [{"config_name": "default", "default": True,
                     "data_files": [{"split": HF_SPLIT_NAMES.get(split, split), "path": f"{split}/{split}-*.parquet"}
                                    for split in splits]}],
        "dataset_info": info,
    }


class _CardDumper(yaml.SafeDumper):
    """PyYAML's safe dumper with list items indented under their key, as the Hub's dataset cards write them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False):
        return super().increase_indent(flow, False)


def _yaml_header(manifest: dict, schema: pa.Schema | None = None, folder: Path | None = None) -> str:
    """The card's YAML front matter between its two ``---`` lines (block style, strings quoted where needed)."""
    body = yaml.dump(card_metadata(manifest, schema, folder), Dumper=_CardDumper, sort_keys=False,
                     allow_unicode=True, default_flow_style=False, width=1 << 16)
    return f"---\n{body}---"


def write_dataset_card(folder: Path, manifest: dict, schema: pa.Schema | None = None) -> Path:
    """Write ``folder/README.md`` (the card, with the features of ``schema``); returns its path."""
    return atomic_write_text(Path(folder) / CARD_FILE, render_dataset_card(manifest, schema, folder))


def _table1(manifest: dict) -> str:
    stats, paper = manifest["statistics"], PAPER_TABLE1.get(manifest["dataset"])
    rows = [
        ("Train", stats["splits"].get("train"), paper and paper["splits"]["train"]),
        ("Valid", stats["splits"].get("valid"), paper and paper["splits"]["valid"]),
        ("Test", stats["splits"].get("test"), paper and paper["splits"]["test"]),
        ("One label", stats["one_label"], paper and paper["one_label"]),
        ("Two and more labels", stats["two_or_more_labels"], paper and paper["two_or_more_labels"]),
        ("Avg. time (s) per sample", stats["mean_duration_seconds"], paper and paper["mean_duration_seconds"]),
        ("Labels", len(manifest["labels"]), paper and paper["labels"]),
        ("Avg. words per sentence", stats["mean_words_per_sentence"], paper and paper["mean_words_per_sentence"]),
    ]
    out = ["| statistic | this build | paper (Table 1) |", "|---|---|---|"]
    out += [f"| {name} | {ours if ours is not None else '–'} | {theirs if theirs is not None else '–'} |"
            for name, ours, theirs in rows]
    return "\n".join(out)


def _label_table(manifest: dict) -> str:
    zh = manifest.get("label_names_zh") or [""] * len(manifest["labels"])
    freq = manifest["statistics"]["label_frequencies"]
    out = ["| index | label | tag | samples | share |", "|---|---|---|---|---|"]
    out += [f"| {i} | {name} | {z} | {freq[name]['count']} | {freq[name]['share']:.1%} |"
            for i, (name, z) in enumerate(zip(manifest["labels"], zh))]
    return "\n".join(out)


def _modality_table(manifest: dict) -> str:
    out = ["| column | type | node | sequential |", "|---|---|---|---|"]
    out += [f"| `{m['name']}` | list<fixed_size_list<float32, {m['dim']}>> | {m['node']} | {m['sequential']} |"
            for m in manifest["modalities"]]
    return "\n".join(out)


def _folds_line(manifest: dict) -> str:
    """The CV folds' grouping rule, where the manifest records one (MOSEI: by video, or row-level)."""
    folds = manifest.get("folds")
    if not isinstance(folds, dict) or not folds.get("rule"):
        return ""
    return f"\nCross-validation folds: {folds['rule']} (`--folds {folds.get('option', '?')}`).\n"


def render_dataset_card(manifest: dict, schema: pa.Schema | None = None, folder: Path | None = None) -> str:
    """The card's text; ``schema`` (a shard's) adds the features to the YAML, ``folder`` the split sizes."""
    counts, settings = manifest["counts"], manifest["settings"]
    name = manifest["dataset"]
    sections = SECTIONS.get(name, {})
    if "input" in counts:
        curation = f"""Input records: {counts['input']} = kept {counts['kept']} + quarantined {counts['quarantined']} (see
`quarantine.jsonl`) + without an emotion tag {counts['without_emotion_tag']}. Text nodes with no word that
has a vector (zero feature): {counts.get('text_nodes_without_word_vectors', 0)}."""
    else:
        curation = _curation_counts(counts)
    shards = sum(len(v) for v in manifest["shards"].values())
    text_columns = manifest.get("text_columns", {})
    text_lines = "\n".join(
        f"- `{c['text']}` list<string> and `{c['tokens']}` list<list<string>>: the {m} nodes' texts and tokens "
        f"(so they can be re-embedded)" for m, c in text_columns.items())
    return f"""{_yaml_header(manifest, schema, folder)}

# Dataset Card for {name} (this build)

## Dataset Description

{DESCRIPTIONS.get(name, name)}

This card was generated by the build from its manifest; every number below is computed from the shards.

## Dataset Structure

{shards} Parquet shard(s) in `train/`, `valid/` and `test/` (the split `valid` is named `validation` by
`datasets.load_dataset(this folder)`, which reads this card; the toolkit accepts both names); `manifest.json`
holds the label order, the modalities and their dimensions, the extractor settings, the counts and the sha256
of every shard, and the same facts (without shard digests) are in each shard's schema metadata under
`mmer.manifest`; datasets' own features (under `huggingface`) make `label_ids` a list of `ClassLabel`.

Columns:
- `id` string; `labels` list<string> (the label names); `label_ids` list<int64> (the same labels as indices in
  the label order below: `ClassLabel`s in `datasets`); `label_vector` fixed_size_list<int8, {len(manifest['labels'])}>
  in the label order below; `fold` int8, 0–9, the cross-validation fold; `duration_seconds` float32
  ({sections.get('duration', 'audio length')}).
- One column per modality, a sample's nodes (possibly none):

{_modality_table(manifest)}

{text_lines}

Splits: {settings['splits']['rule']}; folds by {settings['splits']['method']}, seed {settings['seed']}.
{_folds_line(manifest)}
### Statistics (the paper's Table 1)

{_table1(manifest)}

### Labels

{_label_table(manifest)}

## Dataset Creation

### Curation

{curation}

Extractor settings:

```json
{json.dumps(settings, ensure_ascii=False, indent=2, sort_keys=True)}
```

### Annotations

{sections.get('annotations', _NEMU_ANNOTATIONS)}

### Personal and Sensitive Information

{sections.get('personal', _NEMU_PERSONAL)}

## Uses and Limitations

{sections.get('uses', _NEMU_USES)}

## Licence

`license: other` (`{LICENCES.get(name, LICENCES["NEMu"])["license_name"]}`): {LICENCES.get(name, LICENCES["NEMu"])["text"]}

## Citation

{sections.get('citation', _NEMU_CITATION)}
"""


_NEMU_ANNOTATIONS = """Labels are the emotion tags of the source platform (for NEMu, NetEase Cloud Music tags); songs without any of
the emotion tags are not samples."""
_NEMU_PERSONAL = "Only the text of user comments is kept: no user names, user ids, avatars, timestamps or like counts."
_NEMU_USES = """For research on multi-modal multi-label emotion recognition. Labels are platform tags, not expert
annotations; the label distribution is imbalanced (see the label table). Respect the source's terms of use."""
_NEMU_CITATION = """Dong Zhang, Xincheng Ju, Wei Zhang, Junhui Li, Shoushan Li, Qiaoming Zhu, Guodong Zhou. Multi-modal
Multi-label Emotion Recognition with Heterogeneous Hierarchical Message Passing. AAAI 2021."""
