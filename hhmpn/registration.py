"""Registry entries for HHMPN (Zhang et al., AAAI 2021) and its four ablations (paper, Table 2).

The model lives in ``hhmpn.model``, its configurations in ``hhmpn.config`` (one source for both the
``hhmpn-train`` command and the benchmark).
"""

from __future__ import annotations

from hhmpn.config import VARIANTS, profile
from hhmpn.model import HHMPN
from mmer.registry import DataInfo, model_kwargs, register

CITATION = "Zhang et al., AAAI 2021"
__all__ = ["CITATION", "VARIANTS"]  # VARIANTS lives in hhmpn.config (no torch); re-exported here


def _config(name: str, ablation: str | None) -> dict:
    return profile(name).replace(ablation=ablation).to_dict()


def _factory(config: dict, info: DataInfo) -> HHMPN:
    return HHMPN(info.modality_dims, info.num_labels, **model_kwargs(config))


for _name, _ablation in VARIANTS.items():
    register(_name, group="Ours", citation=CITATION, kind="neural", quick=_config("quick", _ablation),
             paper=_config("paper", _ablation), figure_source=_ablation is None)(_factory)
