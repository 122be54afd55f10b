"""Small raw NEMu folders written by the tests themselves, in the exact raw format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from nemu.labels import NEMU_LABELS

LYRIC_LINES = ["窗外的雨一直下", "我想起你的笑脸", "城市的灯火阑珊", "风吹过安静的街", "回忆像一首老歌"]
COMMENTS = ["这首歌太好听了", "单曲循环一整天。真的很喜欢！还会再听", "想起了以前的日子", "好治愈的声音"]


def write_audio(path: Path, seconds: float, freq: float, fmt: str | None = None) -> None:
    sr = 22050
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, format=fmt)


def write_image(path: Path, colour: tuple[int, int, int]) -> None:
    array = np.zeros((48, 64, 3), dtype=np.uint8)
    array[:] = colour
    array[::8] = 255 - np.array(colour, dtype=np.uint8)  # some structure, so features are not constant
    Image.fromarray(array).save(path)


def song(i: int, raw: Path, labels: list[int] | None = None, audio_ext: str = "wav") -> dict:
    """Write song ``i``'s media files under ``raw`` and return its record."""
    (raw / "audio").mkdir(parents=True, exist_ok=True)
    (raw / "images").mkdir(parents=True, exist_ok=True)
    labels = labels if labels is not None else [i % 12, (i * 5 + 3) % 12][: 1 + i % 2]
    audio = f"audio/s{i:03d}.{audio_ext}"
    # Every song's media are its own (the pitch and colours depend on i): songs with byte-identical
    # media are grouped into one fold by the build, which the tests of other behaviour should not meet.
    write_audio(raw / audio, 1.5 + 0.25 * (i % 3), 220 + 40 * labels[0] + i)
    images = [f"images/s{i:03d}-0.png", f"images/s{i:03d}-1.jpg"]
    write_image(raw / images[0], (20 * (i % 12), (100 + i) % 256, 200))
    write_image(raw / images[1], (200, 20 * (i % 12), (50 + i) % 256))
    lrc = "[00:00.00]作词 : 某某\n[00:01.00]作曲：某某\n" + "\n".join(
        f"[00:{10 + k:02d}.50]{line}" for k, line in enumerate(LYRIC_LINES[: 2 + i % 4]))
    tags = [NEMU_LABELS[k][1] if k % 3 else NEMU_LABELS[k][0] for k in labels] + ["华语"]
    return {"id": f"s{i:03d}", "title": f"歌{i}", "artist": "歌手", "tags": tags, "lyrics": lrc,
            "comments": COMMENTS[: 1 + i % 4], "audio": audio, "images": images}


def write_records(raw: Path, records: list[dict | str | bytes]) -> Path:
    """records.jsonl from dicts (JSON-encoded), str (written as is) or bytes (written raw)."""
    raw.mkdir(parents=True, exist_ok=True)
    with (raw / "records.jsonl").open("wb") as handle:
        for record in records:
            if isinstance(record, dict):
                try:
                    record = json.dumps(record, ensure_ascii=False).encode("utf-8")
                except UnicodeEncodeError:  # lone surrogates can only travel as JSON \u escapes
                    record = json.dumps(record).encode("ascii")
            handle.write((record.encode("utf-8") if isinstance(record, str) else record) + b"\n")
    return raw / "records.jsonl"


def tiny_raw(raw: Path, n: int = 20) -> list[dict]:
    records = [song(i, raw, audio_ext=("wav", "ogg", "flac", "mp3")[i % 4]) for i in range(n)]
    write_records(raw, records)
    return records
