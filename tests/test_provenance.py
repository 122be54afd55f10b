"""A built dataset says where it came from, and a synthetic sample is never called NEMu."""

from __future__ import annotations

import json

import pytest

from nemu.provenance import (PROVENANCE_FILE, ProvenanceError, dataset_title, is_real, is_synthetic,
                             read_raw_provenance)


def test_a_raw_folder_without_provenance_is_real_records(tmp_path):
    assert read_raw_provenance(tmp_path) == {"kind": "raw-records"}
    (tmp_path / PROVENANCE_FILE).write_text(json.dumps({"kind": "synthetic-sample", "seed": 3, "songs": 50}))
    assert read_raw_provenance(tmp_path)["seed"] == 3
    (tmp_path / PROVENANCE_FILE).write_text("[1, 2]")
    with pytest.raises(ProvenanceError, match=PROVENANCE_FILE):
        read_raw_provenance(tmp_path)


def test_titles_name_the_synthetic_sample_and_only_real_data_is_real():
    sample = {"dataset": "NEMu", "counts": {"kept": 228}, "source": {"kind": "synthetic-sample", "seed": 0}}
    assert dataset_title(sample) == "NEMu sample (synthetic, 228 songs)"
    assert is_synthetic(sample) and not is_real(sample)
    real = {"dataset": "NEMu", "source": {"kind": "raw-records"}}
    assert dataset_title(real) == "NEMu" and is_real(real)
    assert is_real({"dataset": "MOSEI", "source": {"kind": "cmu-mosei", "form": "sdk"}})
    unknown = {"dataset": "NEMu"}  # built before sources were recorded: never presented as real NEMu
    assert not is_real(unknown) and dataset_title(unknown) == "NEMu (source not recorded)"
