"""HHMPN's speed work changes no number: logits, loss and gradients equal the frozen reference.

``tests/data/hhmpn_speed_reference.npz`` holds the outputs of ``hhmpn.model.HHMPN`` as it was at commit 2c8e880
(before the issue "training near the hardware limit" touched it), on the fixed batches and seeded weights that
:func:`reference_case` builds: every variant of Table 2 (the full model and the four ablations), in float64
(where any change of the equations shows far above rounding) and, for the full model, in float32 at MOSEI's
aligned shapes (where only reassociation of sums may differ). The file was written by running this module as a
script against that commit's code (``PYTHONPATH=<checkout of 2c8e880> python tests/test_hhmpn_speed_equality.py
--write``); rerunning it on newer code would freeze that code instead, so it refuses to overwrite the file unless
told to.

The batches contain the hard cases: a sample with one modality empty, a sample with no real node at all, rows
padded to different lengths, and masked padding holding large values (that padding must never leak).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hhmpn.model import HHMPN

REFERENCE = Path(__file__).parent / "data" / "hhmpn_speed_reference.npz"
VARIANTS = (None, "no_f2f", "no_f2l", "no_l2l", "no_m2l")
#: (name, dtype, dims, steps per modality, d, rounds, batch): a float64 case per variant; MOSEI's aligned shapes in float32.
CASES = [(f"f64-{variant or 'full'}", torch.float64, {"text": 7, "audio": 5, "visual": 3}, {"text": 6, "audio": 4,
          "visual": 5}, 8, 3, 5, variant) for variant in VARIANTS]
# Fewer label rows than d: the label rounds' other evaluation order of eq. (4) (hhmpn.layers.MPAtt.query_key).
CASES.append(("f64-few-rows", torch.float64, {"text": 7, "audio": 5, "visual": 3}, {"text": 6, "audio": 4, "visual": 5},
              32, 2, 3, None))
CASES.append(("f32-mosei", torch.float32, {"text": 300, "audio": 74, "visual": 35}, {"text": 60, "audio": 60,
              "visual": 60}, 32, 3, 6, None))
NUM_LABELS = 6


def reference_batch(dims: dict, steps: dict, batch_size: int, dtype: torch.dtype, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    features, masks = {}, {}
    for index, (name, dim) in enumerate(dims.items()):
        length = steps[name]
        lengths = torch.randint(1, length + 1, (batch_size,), generator=g)
        lengths[index % batch_size] = length
        lengths[batch_size - 1] = 0  # a sample with no real node at all
        if index == 1:
            lengths[batch_size - 2] = 0  # a sample without this modality
        mask = torch.arange(length)[None, :] < lengths[:, None]
        x = torch.randn(batch_size, length, dim, generator=g, dtype=dtype)
        features[name] = torch.where(mask[..., None], x, torch.full((), 1e4, dtype=dtype))  # loud padding
        masks[name] = mask
    labels = (torch.rand(batch_size, NUM_LABELS, generator=g) > 0.5).to(dtype)
    return {"features": features, "masks": masks, "labels": labels, "ids": [f"s{i}" for i in range(batch_size)]}


def reference_case(case) -> dict[str, np.ndarray]:
    """Logits, round logits, attention maps, the loss and every parameter's gradient of one case (train mode,
    dropout 0: deterministic, and the training path)."""
    name, dtype, dims, steps, d, rounds, batch_size, ablation = case
    torch.manual_seed(0)
    model = HHMPN(dims, NUM_LABELS, d=d, rounds=rounds, dropout=0.0, lam=0.2, ablation=ablation).to(dtype).train()
    batch = reference_batch(dims, steps, batch_size, dtype)
    outputs = model(batch)
    loss = model.loss(outputs, batch)
    loss.backward()
    result = {"logits": outputs["logits"], "round_logits": outputs["round_logits"], "loss": loss}
    for key in ("f2l_attention", "l2l_attention"):
        for modality, value in (outputs[key] or {}).items():
            result[f"{key}.{modality}"] = value
    if outputs["m2l_weights"] is not None:
        result["m2l_weights"] = outputs["m2l_weights"]
    for modality, value in outputs["feature_states"].items():
        result[f"feature_states.{modality}"] = value
    for param_name, param in model.named_parameters():
        result[f"grad.{param_name}"] = param.grad
    return {key: value.detach().cpu().numpy() for key, value in result.items()}


def _reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_outputs_and_gradients_equal_the_frozen_reference(case):
    reference = {key.split("/", 1)[1]: value for key, value in _reference().items() if key.startswith(case[0] + "/")}
    assert reference, f"{REFERENCE} has no entries for case {case[0]}"
    current = reference_case(case)
    assert sorted(current) == sorted(reference)  # the same outputs and the same parameter names
    # float64: the equations' own rounding is ~1e-16, a changed equation moves values by far more than 1e-10.
    # float32: reassociated sums differ by a few ulps of the largest terms.
    rtol, atol = (1e-10, 1e-12) if case[1] == torch.float64 else (2e-4, 2e-6)
    for key, expected in reference.items():
        assert current[key].shape == expected.shape, key
        np.testing.assert_allclose(current[key], expected, rtol=rtol, atol=atol, err_msg=f"{case[0]}: {key}")


def test_reference_outputs_are_not_trivial():
    """The frozen values carry signal: non-zero gradients for every parameter, distinct logits per sample."""
    reference = _reference()
    for case in CASES:
        name = case[0]
        assert np.ptp(reference[f"{name}/logits"], axis=0).max() > 1e-3
        grads = [key for key in reference if key.startswith(f"{name}/grad.")]
        assert grads and all(np.abs(reference[key]).max() > 0 for key in grads), name


if __name__ == "__main__":
    if REFERENCE.exists() and "--force" not in sys.argv:
        sys.exit(f"{REFERENCE} exists: it freezes the code of commit 2c8e880; pass --force to overwrite it")
    if "--write" not in sys.argv:
        sys.exit("usage: python -m tests.test_hhmpn_speed_equality --write [--force]")
    torch.set_num_threads(1)
    frozen = {f"{case[0]}/{key}": value for case in CASES for key, value in reference_case(case).items()}
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(REFERENCE, **frozen)
    print(f"wrote {len(frozen)} arrays to {REFERENCE} ({REFERENCE.stat().st_size} bytes)")
