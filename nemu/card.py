"""DATASET_CARD.md for a built dataset, after the Hugging Face dataset-card template.

The YAML header (configs, data_files, splits) and every number in the card come from the build's
manifest, so the card cannot drift from the shards it describes.
"""

from __future__ import annotations

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

# Dataset-specific wording of the card's fixed sections; a dataset without an entry (NEMu) gets the
# original NEMu wording, so its card is unchanged.
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
        f"- {key}: {value if isinstance(value, str) else __import__('json').dumps(value, ensure_ascii=False)}"
        for key, value in counts.items())


def _yaml_header(manifest: dict) -> str:
    stats = manifest["statistics"]
    lines = ["---", f"pretty_name: {manifest['dataset']}", "license: other",
             f"language:\n- {'zh' if manifest['dataset'] == 'NEMu' else 'en'}",
             "task_categories:\n- audio-classification\n- text-classification\n- image-classification",
             "tags:\n- emotion-recognition\n- multi-label\n- multi-modal",
             "configs:", "- config_name: default", "  data_files:"]
    for split in manifest["shards"]:
        lines += [f"  - split: {split}", f"    path: {split}/{split}-*.parquet"]
    lines += ["dataset_info:", "  splits:"]
    for split, count in stats["splits"].items():
        lines += [f"  - name: {split}", f"    num_examples: {count}"]
    lines.append("---")
    return "\n".join(lines)


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


def render_dataset_card(manifest: dict) -> str:
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
    return f"""{_yaml_header(manifest)}

# Dataset Card for {name} (this build)

## Dataset Description

{DESCRIPTIONS.get(name, name)}

This card was generated by the build from its manifest; every number below is computed from the shards.

## Dataset Structure

{shards} Parquet shard(s) in `train/`, `valid/` and `test/`; `manifest.json` holds the label order, the
modalities and their dimensions, the extractor settings, the counts and the sha256 of every shard, and
the same facts (without shard digests) are in each shard's schema metadata under `mmer.manifest`.

Columns:
- `id` string; `labels` list<string>; `label_vector` fixed_size_list<int8, {len(manifest['labels'])}> in the label order below;
  `fold` int8, 0–9, the cross-validation fold; `duration_seconds` float32 ({sections.get('duration', 'audio length')}).
- One column per modality, a sample's nodes (possibly none):

{_modality_table(manifest)}

{text_lines}

Splits: {settings['splits']['rule']}; folds by {settings['splits']['method']}, seed {settings['seed']}.

### Statistics (the paper's Table 1)

{_table1(manifest)}

### Labels

{_label_table(manifest)}

## Dataset Creation

### Curation

{curation}

Extractor settings:

```json
{__import__('json').dumps(settings, ensure_ascii=False, indent=2, sort_keys=True)}
```

### Annotations

{sections.get('annotations', _NEMU_ANNOTATIONS)}

### Personal and Sensitive Information

{sections.get('personal', _NEMU_PERSONAL)}

## Uses and Limitations

{sections.get('uses', _NEMU_USES)}

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
