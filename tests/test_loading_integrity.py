"""Loaders check what the manifest lists, and only that (README "What loading promises"); nemu-verify.

Each test damages a private copy of the tiny build (conftest ``built``) the way a user or a disk would: a stray
copy in a split folder, a flipped byte inside a shard, an edited dim, a manifest without checksums, a missing
folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import nemu
from nemu.loading import MMERDataset, clear_cache, load, read_table, split_datasets
from nemu.shards import DatasetMismatch, read_manifest

# nemu.integrity and pipelines.verify are imported where used, so that each test fails on its own finding on a
# checkout without them


@pytest.fixture
def out(built, tmp_path) -> Path:
    """A private copy of the tiny build, links and generations kept as the build wrote them."""
    copy = tmp_path / "out"
    shutil.copytree(built[0] / "out", copy, symlinks=True, ignore=shutil.ignore_patterns(".cache"))
    clear_cache()
    yield copy
    clear_cache()


def _rows(out: Path, split: str = "train") -> int:
    return sum(entry["rows"] for entry in read_manifest(out)["shards"][split])


def _edit_manifest(out: Path, change) -> None:
    """Edit OUT/manifest.json in place (through its link, as a text editor would)."""
    path = out / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    change(manifest)
    path.write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")


def _flip_a_byte(path: Path) -> None:
    """One byte inverted inside the column data: the size and the footer (rows, schema) stay as they were."""
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))


def _verify(argv: list[str], capsys) -> tuple[int, str, str]:
    from pipelines import verify as verify_cli

    code = verify_cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _warned(caught, name: str) -> str:
    """The message of the first warning of class ``name`` among ``caught``."""
    found = [str(w.message) for w in caught if w.category.__name__ == name]
    assert found, [f"{w.category.__name__}: {w.message}" for w in caught]
    return found[0]


def test_loaders_ignore_and_name_the_files_the_manifest_does_not_list(out):
    first = out / read_manifest(out)["shards"]["train"][0]["path"]
    stray = first.with_name(first.stem + " (copy).parquet")
    shutil.copyfile(first, stray)
    (first.parent / "notes.txt").write_text("mine", encoding="utf-8")
    (first.parent / "old").mkdir()
    shutil.copyfile(first, first.parent / "old" / first.name)  # pyarrow.dataset would recurse into it
    expected = _rows(out)
    for name, read in (("load", lambda: len(load(out, "train"))),
                       ("read_table", lambda: read_table(out, "train").num_rows),
                       ("MMERDataset", lambda: len(MMERDataset(out, "train"))),
                       ("split_datasets", lambda: len(split_datasets(out)["train"]))):
        with pytest.warns(UserWarning) as caught:
            assert read() == expected, name
        message = _warned(caught, "UnlistedFileWarning")
        assert "(copy).parquet" in message and "notes.txt" in message and "old/" in message, (name, message)
    from nemu.loading import shard_files

    assert [p.name for p in shard_files(out, "train")] == [Path(e["path"]).name
                                                           for e in read_manifest(out)["shards"]["train"]]
    with warnings.catch_warnings():  # a folder holding only its own files warns about nothing
        warnings.simplefilter("error")
        stray.unlink(), (first.parent / "notes.txt").unlink(), shutil.rmtree(first.parent / "old")
        assert len(load(out, "train")) == expected


def test_a_flipped_byte_inside_a_shard_is_refused_naming_the_file(out):
    assert len(load(out, "train")) == _rows(out)  # read (and hashed) once before the damage
    entry = read_manifest(out)["shards"]["train"][1]
    path = out / entry["path"]
    _flip_a_byte(path)
    assert path.stat().st_size == entry["bytes"] and pq.ParquetFile(path).metadata.num_rows == entry["rows"]
    for name, read in (("load", lambda: load(out, "train")), ("read_table", lambda: read_table(out, None)),
                       ("MMERDataset", lambda: MMERDataset(out, "test")),  # it decodes every split's shards
                       ("split_datasets", lambda: split_datasets(out, 3))):
        with pytest.raises(DatasetMismatch, match=rf"{path.name}: sha256 differs") as refused:
            read()
        assert str(out) in str(refused.value), name


def test_check_integrity_false_skips_the_checksum_only(out):
    _edit_manifest(out, lambda m: m["shards"]["train"][0].update(sha256="0" * 64))  # a wrong digest, intact shard
    with pytest.raises(DatasetMismatch, match="sha256 differs"):
        load(out, "train")
    with pytest.raises(DatasetMismatch, match="sha256 differs"):
        MMERDataset(out, "train")
    assert len(load(out, "train", check_integrity=False)) == _rows(out)
    assert len(MMERDataset(out, "train", check_integrity=False)) == _rows(out)
    # the cheap checks still run: a truncated shard is refused with check_integrity=False too
    path = out / read_manifest(out)["shards"]["test"][0]["path"]
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetMismatch, match=rf"{path.name}: \d+ bytes, the manifest lists"):
        load(out, "test", check_integrity=False)


def test_a_manifest_whose_dim_was_edited_is_refused_naming_modality_dim_and_width(out, capsys):
    dims = {m["name"]: m["dim"] for m in read_manifest(out)["modalities"]}
    assert dims["audio"] % 2 == 0  # half the width divides the data evenly: a reshape would "work"

    def halve(manifest):
        next(m for m in manifest["modalities"] if m["name"] == "audio")["dim"] = dims["audio"] // 2

    _edit_manifest(out, halve)
    pattern = rf"modality 'audio': the manifest's dim is {dims['audio'] // 2} but the shard's nodes are {dims['audio']}"
    for read in (lambda: MMERDataset(out, "train", modalities=["audio"]), lambda: load(out, "valid"),
                 lambda: split_datasets(out, 0, ["audio"]), lambda: MMERDataset(out, "train", check_integrity=False)):
        with pytest.raises(DatasetMismatch, match=pattern):
            read()
    code, _, err = _verify([str(out)], capsys)
    assert code == 1 and "modality 'audio'" in err and f"dim is {dims['audio'] // 2}" in err, err


def test_a_manifest_whose_labels_were_cut_is_refused(out):
    _edit_manifest(out, lambda m: m["labels"].pop())
    with pytest.raises(DatasetMismatch, match=r"label_vector is 12 wide but the manifest lists 11 labels"):
        MMERDataset(out, "train")


def test_nodes_of_another_width_in_a_plain_list_column_are_refused_not_reshaped(out):
    """A shard rewritten by another tool as list<list<float>> (no fixed width in the schema): the width is
    checked in the data when the nodes are decoded."""
    import pyarrow as pa

    manifest = read_manifest(out)
    dim = next(m["dim"] for m in manifest["modalities"] if m["name"] == "audio")
    for entries in manifest["shards"].values():
        for entry in entries:
            path = out / entry["path"]
            table = pq.read_table(path)
            nodes = [[vector[: dim // 2] for vector in song] for song in table["audio"].to_pylist()]
            index = table.schema.get_field_index("audio")
            table = table.set_column(index, "audio", pa.array(nodes, pa.list_(pa.list_(pa.float32()))))
            pq.write_table(table, path)
            entry.update(bytes=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(DatasetMismatch, match=rf"modality 'audio': the manifest's dim is {dim} but the shards' nodes "
                                              rf"are {dim // 2} wide"):
        MMERDataset(out, "train", modalities=["audio"])


def test_a_manifest_without_checksums_loads_with_a_note(out, capsys):
    _edit_manifest(out, lambda m: [entry.pop("sha256") for entries in m["shards"].values() for entry in entries])
    for read in (lambda: load(out, "train"), lambda: MMERDataset(out, "train")):
        with pytest.warns(UserWarning) as caught:
            assert len(read()) == _rows(out)
        assert "no sha256" in _warned(caught, "IntegrityWarning")
    code, _, err = _verify(["--data", str(out)], capsys)
    assert code == 0 and "warning" in err and "no sha256" in err, err


def test_nemu_verify_exit_codes_and_findings(out, tmp_path, capsys):
    code, stdout, err = _verify(["--data", str(out)], capsys)
    assert code == 0 and "ok" in stdout and err == "", (stdout, err)
    manifest = read_manifest(out)
    total = sum(entry["rows"] for entries in manifest["shards"].values() for entry in entries)
    assert f"{total} rows" in stdout
    # the writer recorded the digest and size of the bytes it wrote
    for entries in manifest["shards"].values():
        for entry in entries:
            data = (out / entry["path"]).read_bytes()
            assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()

    first = out / manifest["shards"]["train"][0]["path"]
    stray = first.with_name(first.stem + " (copy).parquet")
    shutil.copyfile(first, stray)
    code, stdout, err = _verify([str(out)], capsys)  # a stray file: a warning, the dataset is still whole
    assert code == 0 and "warning" in err and stray.name in err, err
    stray.unlink()

    second = out / manifest["shards"]["train"][1]["path"]
    _flip_a_byte(second)
    (out / manifest["shards"]["test"][0]["path"]).unlink()
    code, stdout, err = _verify([str(out)], capsys)
    assert code == 1 and f"{second.name}: sha256 differs" in err and "listed in the manifest but missing" in err, err
    with pytest.raises(DatasetMismatch, match=r"sha256 differs|missing"):
        nemu.verify(out)

    code, _, err = _verify(["--data", str(tmp_path / "gone")], capsys)
    assert code == 2 and "gone: does not exist" in err, err
    (tmp_path / "empty").mkdir()
    code, _, err = _verify([str(tmp_path / "empty")], capsys)
    assert code == 2 and "not a built dataset folder" in err and "does not exist" not in err, err
    from pipelines import verify as verify_cli

    with pytest.raises(SystemExit) as usage:
        verify_cli.main([])
    assert usage.value.code == 2


def test_nemu_verify_finds_an_edited_manifest_and_damaged_json(out, capsys):
    _edit_manifest(out, lambda m: m["labels"].__setitem__(0, "Bored"))  # same count: the loaders cannot tell
    code, _, err = _verify([str(out)], capsys)
    assert code == 1 and "labels" in err and "schema metadata" in err, err
    (out / "manifest.json").write_text('{"format_version": 1, "labels": [', encoding="utf-8")
    with pytest.raises(ValueError, match=r"manifest.json: not a valid manifest"):
        read_manifest(out)
    code, _, err = _verify([str(out)], capsys)
    assert code == 1 and "manifest.json: not a valid manifest" in err, err


def test_verify_reports_every_problem_not_only_the_first(out):
    from nemu.integrity import verify_dataset

    manifest = read_manifest(out)
    for split in ("train", "valid"):
        _flip_a_byte(out / manifest["shards"][split][0]["path"])
    report = verify_dataset(out)
    assert not report.ok and len(report.problems) == 2
    assert [Path(p.split(":")[0]).name for p in report.problems] == [
        Path(manifest["shards"][s][0]["path"]).name for s in ("train", "valid")]


def test_a_missing_folder_is_not_called_a_folder_without_a_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"gone: does not exist") as missing:
        load(tmp_path / "gone")
    assert "not a built dataset folder" not in str(missing.value)
    with pytest.raises(FileNotFoundError, match=r"gone: does not exist"):
        MMERDataset(tmp_path / "gone")
    (tmp_path / "raw").mkdir()
    with pytest.raises(FileNotFoundError, match=r"raw: not a built dataset folder \(no manifest.json") as empty:
        read_manifest(tmp_path / "raw")
    assert "does not exist" not in str(empty.value)
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"file: is a file, not a built dataset folder"):
        read_manifest(tmp_path / "file")


def test_a_manifest_listing_paths_outside_the_dataset_is_refused(out):
    _edit_manifest(out, lambda m: m["shards"]["train"][0].update(path="../../outside.parquet"))
    with pytest.raises(ValueError, match=r"'\.\./\.\./outside\.parquet' is not a file inside a split folder"):
        load(out, "train")
