"""The 12 NEMu emotion labels: NetEase Cloud Music's emotion tag group (paper, Table 1 and footnote 2).

Order is fixed: it is the order of ``label_vector`` in every NEMu shard and is recorded in the manifest,
so consumers read it from there rather than from this module.
"""

from __future__ import annotations

# (English label name, NetEase tag name)
NEMU_LABELS: tuple[tuple[str, str], ...] = (
    ("Nostalgic", "怀旧"),
    ("Fresh", "清新"),
    ("Romantic", "浪漫"),
    ("Sad", "伤感"),
    ("Healing", "治愈"),
    ("Relaxed", "放松"),
    ("Lonely", "孤独"),
    ("Moving", "感动"),
    ("Excited", "兴奋"),
    ("Happy", "快乐"),
    ("Quiet", "安静"),
    ("Miss", "思念"),
)

LABEL_NAMES: tuple[str, ...] = tuple(english for english, _ in NEMU_LABELS)
CHINESE_NAMES: tuple[str, ...] = tuple(chinese for _, chinese in NEMU_LABELS)

# A raw tag may be the NetEase (Chinese) name or the English name, in any letter case.
_TAG_TO_LABEL: dict[str, str] = {}
for _english, _chinese in NEMU_LABELS:
    _TAG_TO_LABEL[_chinese] = _english
    _TAG_TO_LABEL[_english.casefold()] = _english


def emotion_labels(tags: list[str]) -> list[str]:
    """The emotion labels among raw ``tags``, in canonical label order; other tags are dropped."""
    found = {_TAG_TO_LABEL.get(tag.strip().casefold()) for tag in tags if isinstance(tag, str)}
    return [name for name in LABEL_NAMES if name in found]
