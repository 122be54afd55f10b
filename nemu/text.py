"""Lyrics and comments: cleaning, sentence nodes, jieba tokens and word-vector node embeddings.

A text node is one lyric line or one comment (long comments are split into sentences); its
feature is the mean of its tokens' word vectors (the paper's 300-d GloVe setting).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# LRC time tags ([01:02.03], [1:02], [01:02:03]) and ID tags ([ar:...], [ti:...], [offset:+100]).
_LRC_TIME = re.compile(r"\[\d{1,3}:\d{1,2}(?:[.:]\d{1,3})?\]")
_LRC_ID_TAG = re.compile(r"^\s*\[(?:ar|ti|al|au|by|offset|re|ve|length|kana|lang|id|tool|#)\s*:[^\]]*\]\s*$", re.I)
# Credit lines NetEase puts at the top of lyrics: a role followed by a colon (full- or half-width).
CREDIT_ROLES = (
    "作词", "作曲", "编曲", "词", "曲", "原唱", "演唱", "歌手", "制作人", "制作", "监制", "出品", "发行",
    "混音", "缩混", "母带", "录音", "和声", "和音", "吉他", "贝斯", "鼓", "键盘", "钢琴", "弦乐", "合成器",
    "配唱", "人声", "统筹", "企划", "策划", "OP", "SP", "ISRC",
    "lyrics", "lyricist", "composer", "composed by", "arranger", "arranged by", "producer", "produced by",
    "mixing", "mixed by", "mastering", "mastered by", "vocals", "written by",
)
_CREDIT_LINE = re.compile(
    r"^\s*(?:" + "|".join(re.escape(role) for role in sorted(CREDIT_ROLES, key=len, reverse=True)) + r")\s*[:：]",
    re.I,
)
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;…])|\n")


def clean_lyrics(lyrics: str) -> list[str]:
    """Lyric lines without LRC timestamps, LRC ID tags, credit lines and lines without any word."""
    lines: list[str] = []
    for raw_line in lyrics.splitlines():
        if _LRC_ID_TAG.match(raw_line):
            continue
        line = _LRC_TIME.sub("", raw_line).strip()
        if not _is_word(line) or _CREDIT_LINE.match(line):
            continue
        lines.append(line)
    return lines


def _is_word(token: str) -> bool:
    # Text made only of whitespace, punctuation or symbols carries no word vector.
    return any(unicodedata.category(ch)[0] in "LN" for ch in token)


def split_sentences(text: str) -> list[str]:
    """Sentences ending in Chinese or Western end punctuation (kept), or at line breaks.

    A fragment without any word character ("！", "……", "）。") joins the sentence before it.
    """
    sentences: list[str] = []
    for part in _SENTENCE_END.split(text):
        part = part.strip()
        if not part:
            continue
        if sentences and not _is_word(part):
            sentences[-1] += part
        else:
            sentences.append(part)
    return sentences


def comment_nodes(comments: Sequence[str], max_chars: int) -> list[str]:
    """One node per comment; a comment longer than ``max_chars`` becomes one node per sentence.

    Nodes without a word character (a comment that is only "……" or emoji) carry no text feature and
    are not made into nodes.
    """
    nodes: list[str] = []
    for comment in comments:
        comment = comment.strip()
        parts = split_sentences(comment) if len(comment) > max_chars else [comment]
        nodes.extend(part for part in parts if _is_word(part))
    return nodes


_TOKENIZER = None


def tokenize(text: str) -> list[str]:
    """jieba tokens (accurate mode, HMM on) of one node, without punctuation and whitespace."""
    global _TOKENIZER
    if _TOKENIZER is None:
        import logging

        import jieba

        jieba.setLogLevel(logging.WARNING)
        _TOKENIZER = jieba.Tokenizer()
    return [token for token in _TOKENIZER.lcut(text) if _is_word(token)]


# ----------------------------------------------------------------------------------------------
# Word vectors


def stable_hash(text: str) -> int:
    """A process-independent string hash; Python's hash() is salted per process (PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def train_word_vectors(sentences: list[list[str]], dim: int, seed: int, epochs: int = 10):
    """300-d vectors trained on the corpus' own tokens: deterministic (one worker thread, fixed seed)."""
    from gensim.models import Word2Vec

    model = Word2Vec(
        sentences=sentences,
        vector_size=dim,
        window=5,
        min_count=1,
        sg=1,
        seed=seed,
        workers=1,  # multi-threaded training is order-dependent, so not reproducible
        epochs=epochs,
        hashfxn=stable_hash,
    )
    check_finite_vectors(model.wv, Path("word vectors trained on the corpus"))
    return model.wv


def detect_vector_format(path: Path) -> str:
    """``glove`` (text, no header), ``word2vec-text`` (text with a "count dim" header) or ``word2vec-binary``."""
    with Path(path).open("rb") as handle:
        header = handle.readline()
        second = handle.readline()
    parts = header.split()
    if len(parts) == 2 and all(part.isdigit() for part in parts):
        try:
            fields = second.decode("utf-8").split()
            [float(x) for x in fields[1:]]
            return "word2vec-text" if len(fields) == int(parts[1]) + 1 else "word2vec-binary"
        except (UnicodeDecodeError, ValueError):
            return "word2vec-binary"
    return "glove"


def load_word_vectors(path: Path, fmt: str = "auto"):
    """gensim KeyedVectors from a GloVe text file (no header) or a word2vec text/binary file."""
    from gensim.models import KeyedVectors

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--word-vectors: {path} does not exist")
    fmt = detect_vector_format(path) if fmt == "auto" else fmt
    try:
        vectors = KeyedVectors.load_word2vec_format(
            str(path), binary=fmt == "word2vec-binary", no_header=fmt == "glove", unicode_errors="replace")
    except Exception as exc:  # gensim raises a mix of ValueError/EOFError/UnicodeError on bad files
        raise ValueError(f"--word-vectors: cannot read {path} as {fmt} vectors: {exc}") from exc
    check_finite_vectors(vectors, path, header_lines=0 if fmt == "glove" else 1)
    return vectors


def check_finite_vectors(vectors, path: Path, header_lines: int = 0) -> None:
    """Refuse word vectors with NaN or infinite values, naming their words and rows.

    A row is the vector's 1-based position in the file; for text files it is the line number when
    every word is unique (``header_lines`` counts the word2vec header).

    Such a row would make every node holding that word NaN/inf and reach training unnoticed; dropping
    words silently would change the vocabulary, so the file is refused and the user decides.
    """
    finite = np.isfinite(vectors.vectors).all(axis=1)
    if finite.all():
        return
    bad = np.flatnonzero(~finite)
    shown = ", ".join(f"row {i + 1 + header_lines} {vectors.index_to_key[i]!r}" for i in bad[:10])
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    raise ValueError(f"--word-vectors: {path}: {len(bad)} vector(s) hold NaN or infinite values: {shown}{more}")


def embed_nodes(token_lists: Sequence[Sequence[str]], vectors) -> tuple[np.ndarray, int]:
    """Mean token vector per node, and how many nodes had no in-vocabulary token (they get zeros)."""
    dim = vectors.vector_size
    out = np.zeros((len(token_lists), dim), dtype=np.float32)
    without = 0
    for i, tokens in enumerate(token_lists):
        known = [vectors.key_to_index[t] for t in tokens if t in vectors.key_to_index]
        if known:  # summed in float64: float32 vectors near the type's limit would overflow to inf
            out[i] = vectors.vectors[known].mean(axis=0, dtype=np.float64)
        else:
            without += 1
    return out, without
