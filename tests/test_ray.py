"""Ray as the engine past one machine, on a local Ray instance of 2 CPUs (skipped where Ray is not installed)."""

from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray")

from nemu.build import build  # noqa: E402
from nemu.shards import read_manifest  # noqa: E402
from tests.conftest import options, shard_bytes  # noqa: E402
from tests.rawkit import song, tiny_raw, write_records  # noqa: E402

DOOMED = "doomed"  # the record whose Ray worker SIGKILLs itself, every time (NEMU_TEST_KILL_WORKER)


@pytest.fixture(scope="module")
def local_ray():
    """One local instance for the module (the build joins it and leaves it running): 2 CPUs, no dashboard."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"NEMU_TEST_KILL_WORKER": DOOMED, "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def test_ray_engine_gives_shards_identical_to_local(tmp_path, local_ray):
    tiny_raw(tmp_path / "raw", 12)
    local = build(options(tmp_path / "raw", tmp_path / "local", workers=1, rows_per_shard=5, row_group_rows=2))
    on_ray = build(options(tmp_path / "raw", tmp_path / "ray", workers=2, rows_per_shard=5, row_group_rows=2,
                           engine="ray"))
    assert on_ray.extracted == local.extracted == 12  # Ray extracted every record itself (its own cache)
    assert shard_bytes(tmp_path / "ray") == shard_bytes(tmp_path / "local")
    assert read_manifest(tmp_path / "ray") == read_manifest(tmp_path / "local")
    # the Ray workers wrote the cache the driver read back: a rebuild on the local engine extracts nothing
    again = build(options(tmp_path / "raw", tmp_path / "again", workers=1, rows_per_shard=5, row_group_rows=2,
                          cache_dir=tmp_path / "ray" / ".cache"))
    assert (again.extracted, again.from_cache) == (0, 12)
    assert shard_bytes(tmp_path / "again") == shard_bytes(tmp_path / "local")


def test_a_ray_worker_that_dies_costs_only_its_record(tmp_path, local_ray):
    raw = tmp_path / "raw"
    records = [song(i, raw) for i in range(12)]
    records[2]["id"] = DOOMED  # its worker is killed each time: the batch is retried, then each record alone
    write_records(raw, records)
    summary = build(options(raw, tmp_path / "out", workers=2, engine="ray"))
    assert (summary.kept, summary.quarantined) == (11, 1)
    report = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["id"], q["field"]) for q in report] == [(DOOMED, "record")]
    assert report[0]["reason"].startswith("worker died")


def test_engine_flags_reach_the_build(monkeypatch, tmp_path):
    import pipelines.build_nemu as cli

    seen = []

    def fake_build(opts):
        seen.append(opts)
        raise cli.BuildError("stopped by the test")

    monkeypatch.setattr(cli, "build", fake_build)
    assert cli.main(["--raw", str(tmp_path), "--out", str(tmp_path / "o"), "--engine", "ray", "--ray-address",
                     "head:6379", "--ray-gpu", "never"]) == 2
    assert (seen[0].engine, seen[0].ray_address, seen[0].ray_gpu) == ("ray", "head:6379", "never")


def test_run_all_on_ray_completes_cells_and_resumes(tmp_path, local_ray, built):
    """Two models x two folds as Ray tasks: every cell completes; a second run with more folds runs only the new
    cells and keeps the stored ones byte for byte (the store is the driver's alone)."""
    from baselines import run_all

    base, _, _ = built
    datasets, out = {"nemu": base / "out"}, tmp_path / "results"
    first = run_all.run(datasets, ["BR", "CC"], [0], [0], "quick", out, table3=False, progress=False,
                        engine="ray", jobs=2)
    assert (first["ran"], first["failed"]) == (2, 0)
    stored = (out / "results.jsonl").read_text().splitlines()
    second = run_all.run(datasets, ["BR", "CC"], [0, 1], [0], "quick", out, table3=False, progress=False,
                         engine="ray", jobs=2)
    assert (second["cells"], second["ran"], second["skipped"], second["failed"]) == (4, 2, 2, 0)
    lines = (out / "results.jsonl").read_text().splitlines()
    assert lines[:2] == stored  # finished cells were not redone
    records = [json.loads(line) for line in lines]
    assert sorted((r["model"], r["fold"]) for r in records) == [("BR", 0), ("BR", 1), ("CC", 0), ("CC", 1)]
    assert all(r["status"] == "ok" and "micro_f1" in r["metrics"] for r in records)
    assert (out / "table2.md").is_file()


def test_an_address_where_no_cluster_answers_fails_at_once_naming_it(tmp_path, capsys, monkeypatch):
    import socket

    import pipelines.build_nemu as cli

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh driver, whatever ran before
    tiny_raw(tmp_path / "raw", 10)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = cli.main(["--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--engine", "ray",
                     "--ray-address", f"127.0.0.1:{port}", "--image-encoder", "efficientnet-lite0", "--no-progress"])
    assert code == 2
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in capsys.readouterr().err
    assert not (tmp_path / "out" / "manifest.json").exists()
