"""One record at a time: hostile media, paths, ids, limits and cache entries (issue 14).

Every record's failure is that record's (quarantined with a specific reason, the build goes on);
what is extracted is validated (finite features, correct 8-bit RGB from every image mode); each
record's resources are bounded by a documented limit whose cuts are counted; ids and byte-identical
media cannot leak one song into two splits; a cache entry of the wrong shape is recomputed.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nemu
from nemu.audio import AudioSettings, load_audio
from nemu.build import build
from nemu.extraction import CUT_COUNTS, RecordLimits, load_features
from nemu.images import central_square, load_rgb8, to_rgb8
from nemu.text import load_word_vectors
from tests.conftest import options, shard_bytes
from tests.rawkit import song, write_records

LIMITS = RecordLimits(max_images=3, max_image_pixels=100_000, max_lyric_lines=10, max_comment_nodes=10)
AUDIO = AudioSettings(max_nodes=5, max_seconds=20.0)


def write_wav(path: Path, sample_rate: int, samples: np.ndarray) -> None:
    """A WAV file written byte by byte, so its header can say anything (a 1 Hz sample rate, float data)."""
    data = samples.tobytes()
    bits = samples.dtype.itemsize * 8
    kind = 3 if samples.dtype.kind == "f" else 1  # IEEE float or PCM
    header = (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt "
              + struct.pack("<IHHIIHH", 16, kind, 1, sample_rate, sample_rate * bits // 8, bits // 8, bits)
              + b"data" + struct.pack("<I", len(data)))
    path.write_bytes(header + data)


def gradient(levels: int, dtype) -> np.ndarray:
    return np.tile(np.linspace(0, levels, 96), (64, 1)).round().astype(dtype)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """One build over 12 good songs and every hostile record class; returns what the tests look at."""
    base = tmp_path_factory.mktemp("hostile")
    raw = base / "raw"
    lines: list = [song(i, raw) for i in range(12)]
    line_of: dict[str, int] = {}

    def add(name: str, record) -> dict:
        lines.append(record)
        line_of[name] = len(lines)
        return record

    # --- media paths that the OS refuses in every way it can
    add("nul", song(20, raw))["images"][0] = "images/a\x00b.png"
    add("too_long", song(21, raw))["images"][1] = "images/" + "x" * 300 + ".png"
    os.symlink("loop2.wav", raw / "audio" / "loop1.wav")
    os.symlink("loop1.wav", raw / "audio" / "loop2.wav")
    add("loop", song(22, raw))["audio"] = "audio/loop1.wav"
    (raw / "images" / "folder.png").mkdir()
    add("directory", song(23, raw))["images"][0] = "images/folder.png"
    os.mkfifo(raw / "audio" / "pipe.wav")  # opening it would block the build forever
    add("fifo", song(24, raw))["audio"] = "audio/pipe.wav"
    shutil.copy(raw / "images" / "s000-0.png", raw / "images" / "secret.png")
    add("unreadable", song(25, raw))["images"][0] = "images/secret.png"
    # --- decoders failing in any way, and non-finite data
    add("memory_error", song(26, raw))
    write_wav(raw / "audio" / "loud.wav", 22050, (np.sin(np.arange(44100) / 7) * 1e30).astype(np.float32))
    add("loud", song(27, raw))["audio"] = "audio/loud.wav"
    Image.fromarray(np.array([[0.5, np.nan], [0.1, 0.2]], np.float32)).save(raw / "images" / "nan.png", "TIFF")
    add("nan_pixels", song(28, raw))["images"][0] = "images/nan.png"
    Image.new("RGB", (400, 300), (9, 9, 9)).save(raw / "images" / "big.png")  # 120 000 px > 100 000
    # formats whose decoders run other programs or follow references are not decoded at all
    (raw / "images" / "vector.png").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    add("eps", song(48, raw))["images"][0] = "images/vector.png"
    (raw / "audio" / "list.mp3").write_text("#EXTM3U\n#EXTINF:1,x\nhttp://127.0.0.1:9/x.mp3\n")
    add("playlist", song(49, raw))["audio"] = "audio/list.mp3"
    add("too_many_pixels", song(29, raw))["images"][1] = "images/big.png"
    # --- no content, unparsable nesting
    add("empty", song(30, raw) | {"lyrics": "[00:00.00]作词 : 某某\n[00:01.00]……", "comments": ["……", "  "],
                                  "audio": None, "images": []})
    add("nested", "[" * 100_000 + "]" * 100_000)
    add("long_integer", '{"id": "big", "tags": ["Sad"], "plays": ' + "9" * 5000 + "}")
    # --- ids that are one id after normalisation
    add("composed", song(31, raw) | {"id": "\u00c5-song"})
    add("decomposed", song(32, raw) | {"id": "A\u030a-song"})
    add("upper", song(33, raw) | {"id": "CaseSong"})
    add("lower", song(34, raw) | {"id": "casesong"})
    add("zero_width", song(47, raw) | {"id": "S\u200b001 "})  # s001 with a zero-width space, upper case, a blank
    # --- limits: duplicates of one image, too many images, a strip, a 1 Hz WAV, long texts
    record = add("duplicates", song(35, raw))
    copy = shutil.copy(raw / "images" / "s035-0.png", raw / "images" / "s035-copy.png")
    record["images"] = [record["images"][0]] * 50 + [str(Path(copy).relative_to(raw)), record["images"][1]]
    record = add("over_limit", song(36, raw))
    for k in range(4):
        Image.new("RGB", (32, 32), (k * 60, 10, 10)).save(raw / "images" / f"extra{k}.png")
    record["images"] += [f"images/extra{k}.png" for k in range(4)]  # 6 distinct, 3 allowed
    Image.fromarray(np.tile(np.arange(20_000, dtype=np.uint8)[None, :], (1, 1))).save(raw / "images" / "strip.png")
    add("strip", song(37, raw))["images"] = ["images/strip.png"]  # 1 x 20 000
    write_wav(raw / "audio" / "one-hertz.wav", 1, np.random.default_rng(0).integers(-3000, 3000, 5000).astype(np.int16))
    add("one_hertz", song(38, raw))["audio"] = "audio/one-hertz.wav"  # the header claims 5000 s
    add("long_texts", song(39, raw) | {"lyrics": "\n".join(f"第{k}行歌词" for k in range(30)),
                                       "comments": [f"第{k}条评论" for k in range(30)]})
    # --- 16-bit grayscale against its 8-bit twin and a white square (no audio: the image decides)
    Image.fromarray(gradient(65535, np.uint16)).save(raw / "images" / "g16.png")
    Image.fromarray(gradient(255, np.uint8)).save(raw / "images" / "g8.png")
    Image.new("L", (96, 64), 255).save(raw / "images" / "white.png")
    for name, i in (("g16", 40), ("g8", 41), ("white", 42)):
        add(name, song(i, raw) | {"images": [f"images/{name}.png"]})
    # --- the same recording under other ids (byte-identical copies of the media files)
    for i in range(43, 47):
        original = add(f"original{i}", song(i, raw))
        shutil.copy(raw / original["audio"], raw / "audio" / f"twin{i}.wav")
        add(f"twin{i}", original | {"id": f"twin{i}", "title": "another title", "audio": f"audio/twin{i}.wav"})
    write_records(raw, lines)

    real_access = os.access
    import nemu.extraction as extraction_module

    real_audio_nodes = extraction_module.audio_nodes

    def audio_nodes(path, settings):
        if Path(path).name == "s026.wav":
            raise MemoryError("injected: the decoder ran out of memory")
        return real_audio_nodes(path, settings)

    with pytest.MonkeyPatch.context() as patch:
        # Tests run as root, for whom every file is readable: the permission check is made to fail here.
        patch.setattr(os, "access", lambda p, mode, **kw: not str(p).endswith("secret.png") and real_access(p, mode, **kw))
        patch.setattr(extraction_module, "audio_nodes", audio_nodes)
        summary = build(options(raw, base / "out", audio=AUDIO, limits=LIMITS))
    report = [json.loads(line) for line in (base / "out" / "quarantine.jsonl").read_text().splitlines()]
    quarantined = {q["line"]: q for q in report}
    frame = nemu.load(base / "out", None).set_index("id")
    return {"base": base, "summary": summary, "quarantined": quarantined, "line_of": line_of, "frame": frame,
            "lines": lines, "manifest": nemu.read_manifest(base / "out")}


def reason(hostile, name: str) -> tuple[str, str]:
    entry = hostile["quarantined"].get(hostile["line_of"][name])
    assert entry is not None, f"record {name!r} was not quarantined"
    return entry["field"], entry["reason"]


def test_os_errors_on_media_paths_quarantine_that_record_with_a_specific_reason(hostile):
    assert reason(hostile, "nul") == ("images[0]", "path 'images/a\\x00b.png' contains a NUL byte")
    field, why = reason(hostile, "too_long")
    assert field == "images[1]" and "name too long" in why and "ENAMETOOLONG" in why
    assert reason(hostile, "loop") == ("audio", "file 'audio/loop1.wav': symlink loop (ELOOP)")
    assert reason(hostile, "directory") == ("images[0]", "file 'images/folder.png' is a directory, not a regular file")
    assert reason(hostile, "fifo") == ("audio", "file 'audio/pipe.wav' is a FIFO (named pipe), not a regular file")
    assert reason(hostile, "unreadable") == ("images[0]", "file 'images/secret.png': permission denied (EACCES)")
    for name in ("nul", "too_long", "loop", "directory", "fifo", "unreadable"):
        assert "not found" not in reason(hostile, name)[1]
    # the build went on: every good song is kept
    assert {f"s{i:03d}" for i in range(12)} <= set(hostile["frame"].index)


def test_decoder_errors_of_any_type_and_non_finite_data_are_the_records(hostile):
    field, why = reason(hostile, "memory_error")
    assert field == "audio" and "MemoryError: injected" in why and why.startswith("audio/s026.wav: ")
    field, why = reason(hostile, "nan_pixels")
    assert field == "images[0]" and "NaN or infinite pixels" in why
    field, why = reason(hostile, "eps")
    assert field == "images[0]" and "cannot decode image: UnidentifiedImageError" in why
    field, why = reason(hostile, "playlist")
    assert field == "audio" and "cannot decode audio" in why
    field, why = reason(hostile, "too_many_pixels")
    assert field == "images[1]" and "400×300 = 120000 pixels" in why and "--max-image-pixels" in why


def test_non_finite_features_quarantine_the_record_naming_the_modality(hostile):
    field, why = reason(hostile, "loud")
    assert field == "audio" and "NaN or infinite" in why
    for column in ("lyrics", "comments", "audio", "images"):
        for nodes in hostile["frame"][column]:
            assert all(np.isfinite(np.asarray(node)).all() for node in nodes)


def test_word_vectors_with_non_finite_rows_are_refused_naming_them(tmp_path):
    (tmp_path / "glove.txt").write_text("你好 0.1 0.2\n世界 nan 0.4\n坏 0.1 -inf\n好 1 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"2 vector\(s\) hold NaN or infinite values: row 2 '世界', row 3 '坏'"):
        load_word_vectors(tmp_path / "glove.txt")
    (tmp_path / "w2v.txt").write_text("2 2\n你好 0.1 0.2\n世界 inf 0.4\n", encoding="utf-8")
    with pytest.raises(ValueError, match="row 3 '世界'"):  # the header is line 1
        load_word_vectors(tmp_path / "w2v.txt")


@pytest.mark.parametrize("mode, pixel, expected", [
    ("1", 1, (255, 255, 255)),
    ("L", 100, (100, 100, 100)),
    ("I;16", 65535, (255, 255, 255)),
    ("I;16", 32896, (128, 128, 128)),
    ("I;16B", 257 * 7, (7, 7, 7)),
    ("I", 200, (200, 200, 200)),  # 8-bit data in a 32-bit image
    ("F", 0.5, (128, 128, 128)),  # float in 0..1
    ("LA", (10, 0), (255, 255, 255)),  # fully transparent: white
    ("RGBA", (0, 0, 0, 128), (127, 127, 127)),  # half-transparent black on white
    ("RGBA", (200, 10, 30, 255), (200, 10, 30)),
    ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
    ("YCbCr", (235, 128, 128), (235, 235, 235)),
    ("RGBX", (1, 2, 3, 0), (1, 2, 3)),
])
def test_every_pil_mode_becomes_8bit_rgb_with_its_range_respected(mode, pixel, expected):
    converted = to_rgb8(Image.new(mode, (3, 2), pixel))
    assert converted.mode == "RGB" and converted.size == (3, 2)
    assert tuple(int(v) for v in np.asarray(converted)[1, 2]) == pytest.approx(expected, abs=1)


def test_palette_transparency_32bit_ranges_and_constant_images():
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.info["transparency"] = 0  # entry 0 (red) is transparent
    assert np.asarray(to_rgb8(palette))[0, 0].tolist() == [255, 255, 255]
    palette.info.pop("transparency")
    assert np.asarray(to_rgb8(palette))[0, 0].tolist() == [255, 0, 0]
    sixteen_in_32 = Image.fromarray(np.array([[0, 65535], [32896, 1000]], dtype=np.int32))
    assert np.asarray(to_rgb8(sixteen_in_32))[..., 0].tolist() == [[0, 255], [128, 4]]
    wide = Image.fromarray(np.array([[-10, 10], [0, 1_000_000]], dtype=np.int32))  # no standard range: stretched
    assert np.asarray(to_rgb8(wide))[..., 0].tolist() == [[0, 0], [0, 255]]
    floats = Image.fromarray(np.array([[0.0, 127.0], [255.0, 64.0]], dtype=np.float32))
    assert np.asarray(to_rgb8(floats))[..., 0].tolist() == [[0, 127], [255, 64]]


def test_a_16bit_grayscale_png_is_encoded_as_its_gradient_not_a_white_square(tmp_path, hostile):
    Image.fromarray(gradient(65535, np.uint16)).save(tmp_path / "g16.png")
    pixels = np.asarray(load_rgb8(tmp_path / "g16.png"))
    eight = np.asarray(Image.fromarray(gradient(255, np.uint8)).convert("RGB"))
    assert np.abs(pixels.astype(int) - eight).max() <= 1 and pixels.min() == 0 and pixels.max() == 255
    features = {name: np.asarray(list(hostile["frame"].loc[f"s0{i}", "images"][0]))
                for name, i in (("g16", 40), ("g8", 41), ("white", 42))}
    to_twin = np.linalg.norm(features["g16"] - features["g8"])
    to_white = np.linalg.norm(features["g16"] - features["white"])
    assert to_twin < 0.05 * to_white


def test_limits_cut_what_they_must_and_the_cuts_are_counted(hostile):
    frame, manifest = hostile["frame"], hostile["manifest"]
    duplicates = frame.loc["s035"]
    assert len(duplicates["images"]) == 2 and list(duplicates["image_paths"]) == ["images/s035-0.png",
                                                                                   "images/s035-1.jpg"]
    over = frame.loc["s036"]
    assert len(over["images"]) == 3 and len(over["image_paths"]) == 3
    long_texts = frame.loc["s039"]
    assert len(long_texts["lyrics"]) == 10 and list(long_texts["lyrics_text"])[-1] == "第9行歌词"
    assert len(long_texts["comments"]) == 10
    one_hertz = frame.loc["s038"]
    assert one_hertz["duration_seconds"] == pytest.approx(20.0, abs=0.01)
    assert len(one_hertz["audio"]) == 5  # of 21 windows (862 MFCC frames, 43 a window), 5 kept
    cut = manifest["limits"]["cut"]
    assert set(cut) == set(CUT_COUNTS)
    assert cut["duplicate_images"] == 50  # 49 repeats of one path + one byte-identical copy
    assert cut["images_over_limit"] == 3
    assert cut["lyric_lines_over_limit"] == 20 and cut["comment_nodes_over_limit"] == 20
    assert cut["audio_files_truncated"] == 1 and cut["audio_seconds_cut"] == pytest.approx(4980, abs=0.1)
    assert cut["audio_windows_over_limit"] == 16
    assert manifest["limits"]["per_record"] == {
        "max_images": 3, "max_image_pixels": 100_000, "max_lyric_lines": 10, "max_comment_nodes": 10,
        "max_audio_seconds": 20.0, "max_audio_nodes": 5}
    assert hostile["summary"].cut_by_limits == cut
    text = str(hostile["summary"])
    assert "cut by limits: " in text and "duplicate images 50" in text and "audio seconds cut 4980" in text


def test_an_extreme_aspect_ratio_costs_what_a_square_costs(tmp_path, hostile):
    assert len(hostile["frame"].loc["s037", "images"]) == 1
    assert central_square(Image.new("L", (1, 100_000))).size == (1, 1)
    assert central_square(Image.new("L", (300, 20))).size == (20, 20)
    from nemu.images import ImageEncoder, resolve_image_settings

    encoder = ImageEncoder(resolve_image_settings("efficientnet-lite0"))
    Image.new("RGB", (64_000, 2), (200, 30, 30)).save(tmp_path / "strip.png")
    tensor = encoder.transform(central_square(load_rgb8(tmp_path / "strip.png")))
    assert tuple(tensor.shape) == (3, 224, 224)  # not 3 x 256 x 8 192 000


def test_large_jpegs_are_decoded_at_a_reduced_scale_that_still_covers_the_input(tmp_path):
    Image.new("RGB", (4096, 2048), (10, 200, 30)).save(tmp_path / "large.jpg", quality=90)
    image = load_rgb8(tmp_path / "large.jpg")
    assert image.size == (512, 256)  # 1/8 scale: the short side still >= 256
    assert np.abs(np.asarray(image).astype(int) - (10, 200, 30)).max() <= 3


def test_audio_decoding_stops_at_the_limit_whatever_the_header_claims(tmp_path):
    write_wav(tmp_path / "one-hertz.wav", 1, np.ones(100_000, dtype=np.int16))  # claims 100 000 s
    samples = load_audio(tmp_path / "one-hertz.wav", 22050, max_seconds=3.0)
    assert len(samples) <= 3 * 22050 + 1  # without the limit: 2.2 billion samples (8.8 GB)


def test_audio_is_decoded_block_by_block_so_channels_cannot_multiply_memory(tmp_path):
    import soundfile
    import tracemalloc

    rate, seconds, channels = 48_000, 60, 8
    samples = np.zeros((rate * seconds, channels), np.int16)
    samples[:, 0] = (3000 * np.sin(np.arange(rate * seconds) / 10)).astype(np.int16)
    soundfile.write(tmp_path / "eight.flac", samples, rate)  # under 1 MB on disk: silence compresses to nothing
    del samples
    whole = rate * seconds * channels * 4  # 92 MB: every channel decoded to float32 at once
    tracemalloc.start()
    try:
        mono = load_audio(tmp_path / "eight.flac", 22050, max_seconds=600.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(mono) == 22050 * seconds
    assert peak < whole / 4, f"decoding peaked at {peak / 1e6:.0f} MB"


def test_a_record_without_any_node_is_quarantined_with_its_reason(hostile):
    field, why = reason(hostile, "empty")
    assert field == "record"
    assert why == "no node in any modality (0 lyric lines, 0 comment nodes, 0 audio windows, 0 images)"


def test_json_the_parser_cannot_hold_is_that_lines_failure(hostile):
    assert reason(hostile, "nested") == ("line", "malformed JSON: nested too deeply")
    field, why = reason(hostile, "long_integer")
    assert field == "line" and why.startswith("malformed JSON: Exceeds the limit (4300 digits)")


def test_ids_equal_after_unicode_normalisation_and_case_folding_are_duplicates(hostile):
    line_of = hostile["line_of"]
    composed, decomposed = "\u00c5-song", "A\u030a-song"
    assert reason(hostile, "decomposed") == (
        "id", f"duplicate id '{decomposed}' ('A\\u030a-song') (first seen on line {line_of['composed']}, id "
              f"'{composed}' ('\\xc5-song'): the same after Unicode normalisation and case folding)")
    field, why = reason(hostile, "lower")
    assert field == "id" and f"line {line_of['upper']}, id 'CaseSong'" in why
    field, why = reason(hostile, "zero_width")
    assert field == "id" and "(first seen on line 2, id 's001': the same after" in why
    assert composed in hostile["frame"].index and "CaseSong" in hostile["frame"].index


def test_byte_identical_media_under_other_ids_are_reported_and_share_a_fold(hostile):
    frame = hostile["frame"]
    groups = [[f"s0{i}", f"twin{i}"] for i in range(43, 47)]
    assert hostile["manifest"]["duplicate_media"]["groups"] == groups
    assert hostile["summary"].duplicate_media == groups
    assert "byte-identical media under different ids" in str(hostile["summary"])
    for original, twin in groups:
        assert frame.loc[original, "fold"] == frame.loc[twin, "fold"]


def test_cache_entries_of_the_wrong_shape_are_recomputed(tmp_path, hostile):
    base = hostile["base"]
    out = tmp_path / "out"
    shutil.copytree(base / "out", out)
    entries = sorted((out / ".cache").glob("*/*.npz"))
    kept = len(hostile["frame"])
    assert len(entries) == kept
    with np.load(entries[0]) as data:
        good = {k: data[k] for k in data.files}
    np.savez(entries[0], **(good | {"audio": np.zeros((3, 5), np.float32)}))  # wrong dim
    np.savez(entries[1], **(good | {"images": np.full((1, 1280), np.nan, np.float32)}))  # not finite
    texts = json.loads(str(good["texts"]))
    np.savez(entries[2], **(good | {"texts": np.array(json.dumps({"lyrics_text": texts["lyrics_text"]}))}))
    np.savez(entries[3], **(good | {"audio": good["audio"].astype(np.float64)}))  # wrong dtype
    for entry in entries[:4]:
        assert load_features(entry, 74, 1280) is None
    assert load_features(entries[4], 74, 1280) is not None
    entries[5].unlink()
    entries[5].mkdir()  # not a file at all: recomputed, and the directory is left alone
    with pytest.MonkeyPatch.context() as patch:
        real_access = os.access
        patch.setattr(os, "access", lambda p, mode, **kw: not str(p).endswith("secret.png") and real_access(p, mode, **kw))
        summary = build(options(base / "raw", out, audio=AUDIO, limits=LIMITS))
    # the 5 entries are recomputed, and the record whose decoder was made to fail above now decodes
    assert (summary.extracted, summary.from_cache) == (6, kept - 5)
    assert entries[5].is_dir()
    assert set(nemu.load(out, None)["id"]) == set(hostile["frame"].index) | {"s026"}


def test_two_workers_quarantine_and_keep_exactly_what_one_worker_does(tmp_path, hostile):
    """With --workers 2 a record's text and audio are extracted by one process and its images by another: the
    reasons (which modality fails first), the cuts and the shards must still be those of one process."""
    outs = {}
    for workers in (1, 2):
        outs[workers] = tmp_path / f"w{workers}"
        build(options(hostile["base"] / "raw", outs[workers], audio=AUDIO, limits=LIMITS, workers=workers,
                      cache_dir=tmp_path / f"cache{workers}"))
    one, two = ((outs[w] / "quarantine.jsonl").read_bytes() for w in (1, 2))
    assert one == two and len(one.splitlines()) >= 15
    assert shard_bytes(outs[2]) == shard_bytes(outs[1])
    assert nemu.read_manifest(outs[2])["shards"] == nemu.read_manifest(outs[1])["shards"]


def test_every_limit_is_a_documented_flag_that_reaches_the_build(monkeypatch, tmp_path):
    from pipelines import build_nemu

    help_text = " ".join(build_nemu.parser().format_help().split())
    for flag, default in (("--max-images", "16"), ("--max-image-pixels", "40000000"), ("--max-lyric-lines", "256"),
                          ("--max-comment-nodes", "512"), ("--max-audio-seconds", "600.0"),
                          ("--max-audio-nodes", "300")):
        assert flag in help_text
        section = help_text.split(flag + " ")[-1]
        assert f"(default: {default})" in section.split(" --")[0]
    seen = {}

    def fake_build(options):
        seen["options"] = options
        raise build_nemu.BuildError("stop here")

    monkeypatch.setattr(build_nemu, "build", fake_build)
    code = build_nemu.main([str(tmp_path), "--out", str(tmp_path / "out"), "--max-images", "2",
                            "--max-image-pixels", "1000", "--max-lyric-lines", "3", "--max-comment-nodes", "4",
                            "--max-audio-seconds", "5.5", "--no-progress"])
    assert code == 2
    options = seen["options"]
    assert options.limits == RecordLimits(max_images=2, max_image_pixels=1000, max_lyric_lines=3, max_comment_nodes=4)
    assert options.audio.max_seconds == 5.5
    with pytest.raises(SystemExit):
        build_nemu.parser().parse_args([str(tmp_path), "--out", "x", "--max-images", "0"])
