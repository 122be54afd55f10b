"""HHMPN: Heterogeneous Hierarchical Message Passing Network (Zhang et al., AAAI 2021).

Forward pass for one batch (equation numbers refer to the paper):

1. Input embedding: v_i^m = W_x^m x_i^m for every real feature node of every modality m.
2. Feature-to-feature (F2F, eqs. 9-10): ``f2f_layers`` rounds of cross- and self-modal message passing
   over the feature nodes give z^m.
3. T label rounds. Label states start from u^0 = W_y. In round t every modality m gets its own copy
   u^{m,t} = u^t of the label states, then
   - feature-to-label (F2L, eqs. 11-12): labels of copy m attend to the feature nodes z^m of modality m
     (directed: features never receive anything from labels);
   - label-to-label (L2L, eqs. 13-14): the labels of copy m attend to each other (all pairs);
   - modality-to-label (M2L, eqs. 15-16): a softmax over modalities per label fuses the copies into u^{t+1}.
4. Output (eq. 17): y_hat_i = sigmoid(W^o_i . u_i^T); loss (eqs. 18-20): BCE on round T plus
   lambda x BCE of rounds 1..T-1 with the same W^o.

Decisions where the paper is ambiguous (each is also noted where the code makes it):

* **F2F runs before the label rounds, not inside them.** Eq. (9)-(10) index features by t, but eq. (11)
  reads z_j^m without a round index: labels read the finished feature states. We therefore stack
  ``f2f_layers`` F2F layers (default T, like the encoder/decoder depth pairing of LaMP, which the paper
  follows, and the official code's equal ``n_layers_enc``/``n_layers_dec``) and every label round reads
  the final z. Features are computed once per forward pass.
* **Label copies restart from the fused state every round.** The paper: "For different modalities,
  u_i^{m,t} are all the same by initialization (t = 0) and next iteration", and eqs. (17)/(19) apply W^o
  to one u^t per round, which exists only if M2L fuses the copies every round. So u^{m,0} = W_y and
  u^{m,t} = u^t (the M2L output of round t-1). The official code instead runs independent per-modality
  label stacks and fuses once at the end; we follow the paper.
* **Parameters are per round, shared across modalities.** MP^t/UPD^t carry the round index (eqs. 1-2),
  so each round has its own F2L, L2L and W^l parameters; eqs. (11)-(14) write one W_xy / W_yy with no
  modality index, so within a round the modality copies share them and differ only in the features
  they read. (The official code keeps separate per-modality stacks.)
* **Neighbourhoods include self-loops.** L2L connects every label with every label including itself,
  and F2F lets a node attend to its own modality including itself (ordinary dense self-attention, as
  in LaMP); with a single real node in a modality there is still a message.
* **w/o F2L keeps a feature pathway.** Removing F2L outright would cut labels off from the input and
  make every prediction constant, which cannot give the paper's ablation numbers (miF1 53.5 vs 55.6
  on MOSEI). We remove the feature-to-label *attention*: W^{v1}, W^{v2} of eq. (4) do not exist and
  every label receives the same masked mean of W^v z_j^m (alpha_ij = 1/S^m), followed by eq. (12)
  unchanged. Labels still see the features, but cannot select label-specific ones.
* **w/o M2L** replaces eqs. (15)-(16) by the plain sum over modalities (the paper's "sum readout"),
  taken literally: unlike the convex M2L weights, the sum scales the label states by about |M| per round.
* **Empty modalities.** A sample with zero real nodes in modality m gets zero F2F messages from m, its
  copy m of the labels gets no F2L message, and M2L gives m weight 0 (the sum readout skips it). If a
  sample has no real node at all, its label state is carried over unchanged by the readout.
* **No output bias** in eq. (17), as written; the learned label embeddings W_y can absorb label priors.
* The intermediate loss shares W^o *with* gradients (the paper: "we use the same matrix W^o"); the
  official code uses a detached copy.

Node order never matters: there is no positional encoding, so each modality's nodes are a set
(partial time series); sequences are handled as sets of their frames.

The official code differs from the paper
-----------------------------------------
Read from MANLP-suda/HHMPN at commit a7e04df (``HHMPN/``, run by ``begin.sh``); we follow the paper,
and every number this toolkit reports comes from the protocol in ``hhmpn/engine.py``:

* **No L2L.** ``lamp/Decoders.py:GraphDecoder`` builds every label layer with ``no_dec_self_att=True``,
  so labels never attend to each other: eqs. (13)-(14) are absent (the ``-label_mask prior`` of the
  run script builds a mask that nothing uses).
* **F2F is a MulT encoder**, not eqs. (9)-(10): ``lamp/Encoders.py:GraphEncoder.forward`` returns the
  three outputs of ``lamp/multran.py:MULTModel`` (crossmodal transformers of MulT, Tsai et al. 2019:
  multi-head attention, LayerNorm, positional embeddings, widths hard-coded to 512, so ``-d_model
  256`` fails). It is called without padding masks, so padded steps are attended to. The per-modality
  self-attention stacks the encoder builds are only used inside a string literal (dead code).
* **Labels per modality, fused once.** Each modality has its own stack of label layers over all
  rounds, fused once at the end (``MultiAngleFusion``, ``type='angleFus'``), instead of one fused
  label state per round with M2L (eqs. 15-16).
* **No intermediate loss in the run.** ``begin.sh`` does not pass ``-int_preds``, so only the final
  BCE of eq. (18) is trained; with it, eq. (19) would use a detached copy of W^o, and
  ``GraphDecoder.forward`` appends to lists it never creates.
* **Per-metric epoch selection.** ``utils/evals.py:Logger.evaluate`` keeps, for every metric
  separately, the test value of the (latest) epoch with that metric's best validation value, so the
  reported Acc, HL, miF1 and maF1 can come from four different epochs. We select one checkpoint by
  validation micro-F1 and report every test metric from it.
* **"ACC" is subset accuracy.** ``utils/evals.py:compute_metrics`` stores ``eval_ret['Subset
  accuracy']`` (exact match of the whole label set) as ``ACC``, while the paper's Acc is the
  multi-label accuracy of its cited works (the per-sample Jaccard index); ``mmer.metrics`` reports
  both, as ``accuracy`` (Jaccard) and ``subset_accuracy``.
* Smaller ones: Adam betas (0.9, 0.98), lr 1e-5 with 8-step gradient accumulation of batches of 8,
  d_model 512 and dropout 0.2 in ``begin.sh`` (see ``hhmpn/config.py`` for ours).

Cost: F2F projects every node once per layer and updates all modalities in one UPD_mlp call, the
label rounds score every modality copy in one product, and eqs. (4)-(5) are evaluated in the cheaper of
two exact orders (see hhmpn/layers.py); the equations are those above, checked against a per-pair reference
implementation in tests/test_hhmpn_model.py, and the numbers against the code before the speed work in
tests/test_hhmpn_speed_equality.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hhmpn.layers import F2FLayer, M2LReadout, MessagePassingBlock, SumReadout

#: Ablations of the paper's Table 2; ``None`` is the full model.
ABLATIONS = ("no_f2f", "no_f2l", "no_l2l", "no_m2l")


class HHMPN(nn.Module):
    """HHMPN for any set of modalities.

    Args:
        modality_dims: modality name -> input feature size epsilon^m. The order fixes the order of the
            concatenated F2F messages (the column blocks of W^r_xx) and of ``m2l_weights``; the order of
            the dicts in a batch does not matter.
        num_labels: L.
        d: hidden size (paper: 256).
        rounds: T, the number of label update rounds (paper: 3).
        dropout: dropout on the input embeddings and inside every UPD_mlp.
        lam: lambda, the weight of the intermediate losses (eq. 20; paper: 0.2).
        ablation: None or one of :data:`ABLATIONS`.
        f2f_layers: number of stacked F2F layers; None means ``rounds`` (see the module docstring).
    """

    def __init__(
        self,
        modality_dims: Mapping[str, int],
        num_labels: int,
        d: int = 256,
        rounds: int = 3,
        dropout: float = 0.1,
        lam: float = 0.2,
        ablation: str | None = None,
        f2f_layers: int | None = None,
    ):
        super().__init__()
        if not modality_dims:
            raise ValueError("HHMPN needs at least one modality")
        for name in modality_dims:
            if not name or "." in name:
                raise ValueError(f"invalid modality name {name!r}")
        if ablation in ("", "none", "full"):
            ablation = None
        if ablation is not None and ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation {ablation!r}; choose from {ABLATIONS} or None")
        if rounds < 1:
            raise ValueError("rounds must be >= 1")
        self.modalities: tuple[str, ...] = tuple(modality_dims)
        self.modality_dims = {name: int(dim) for name, dim in modality_dims.items()}
        self.num_labels = int(num_labels)
        self.d = int(d)
        self.rounds = int(rounds)
        self.lam = float(lam)
        self.ablation = ablation
        self.f2f_layers = self.rounds if f2f_layers is None else int(f2f_layers)

        # W_x^m in R^{epsilon^m x d}: per-modality input embedding.
        self.embed = nn.ModuleDict(
            {name: nn.Linear(dim, self.d, bias=False) for name, dim in self.modality_dims.items()}
        )
        self.input_dropout = nn.Dropout(dropout)

        # F2F (eqs. 9-10); absent in the w/o-F2F ablation.
        n_f2f = 0 if ablation == "no_f2f" else self.f2f_layers
        self.f2f = nn.ModuleList(F2FLayer(self.modalities, self.d, dropout) for _ in range(n_f2f))

        # W_y in R^{L x d}: initial label embeddings u^0 (N(0, 1), like nn.Embedding in LaMP).
        self.label_embedding = nn.Parameter(torch.randn(self.num_labels, self.d))

        # Per-round label modules, shared by the modality copies within a round.
        self.f2l = nn.ModuleList(
            MessagePassingBlock(self.d, dropout, attend=ablation != "no_f2l") for _ in range(self.rounds)
        )
        self.l2l = nn.ModuleList(
            [] if ablation == "no_l2l" else [MessagePassingBlock(self.d, dropout) for _ in range(self.rounds)]
        )
        self.readout = nn.ModuleList(
            SumReadout() if ablation == "no_m2l" else M2LReadout(self.d) for _ in range(self.rounds)
        )

        # W^o in R^{L x d}: row i is the output vector of label i (eq. 17).
        self.output_weight = nn.Parameter(torch.randn(self.num_labels, self.d) / self.d**0.5)

    # ------------------------------------------------------------------ inputs
    def _inputs(self, batch: Mapping) -> tuple[Tensor, list[int], list[Tensor]]:
        """Packed embedded nodes v (B, sum_m S_m, d), modality blocks in ``modalities`` order; sizes S_m; masks."""
        features, masks = batch["features"], batch["masks"]
        embedded: list[Tensor] = []
        real: list[Tensor] = []
        for name in self.modalities:
            if name not in features or name not in masks:
                raise KeyError(f"batch has no modality {name!r} (model modalities: {self.modalities})")
            x, mask = features[name], masks[name].to(torch.bool)
            if x.dim() != 3 or x.shape[-1] != self.modality_dims[name]:
                raise ValueError(
                    f"features[{name!r}] must be (B, S, {self.modality_dims[name]}), got {tuple(x.shape)}"
                )
            if mask.shape != x.shape[:2]:
                raise ValueError(f"masks[{name!r}] shape {tuple(mask.shape)} != features {tuple(x.shape[:2])}")
            # Padded rows are zeroed (torch.where also removes NaN/inf padding) and never sent from.
            x = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
            embedded.append(self.embed[name](x))  # v_i^m = W_x^m x_i^m
            real.append(mask)
        sizes = [x.shape[1] for x in embedded]
        return self.input_dropout(torch.cat(embedded, dim=1)), sizes, real

    def _encode_packed(self, batch: Mapping, return_attention: bool) -> tuple[Tensor, list[int], list[Tensor], list]:
        states, sizes, real = self._inputs(batch)
        f2f_attention = []
        for layer in self.f2f:
            states, attention = layer.forward_packed(states, sizes, real, return_attention=return_attention)
            if return_attention:
                f2f_attention.append(attention)  # eqs. (9)-(10)
        return states, sizes, real, f2f_attention

    def encode_features(self, batch: Mapping, *, return_attention: bool = True) -> tuple[dict[str, Tensor], list]:
        """Feature states z^m (B, S_m, d) after F2F, and the F2F attention maps of every layer.

        Depends on the features and masks only: nothing flows from the labels into the features.
        """
        states, sizes, _, f2f_attention = self._encode_packed(batch, return_attention)
        return dict(zip(self.modalities, states.split(sizes, dim=1))), f2f_attention

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Mapping, *, return_f2f_attention: bool = False) -> dict:
        """Run HHMPN on a batch (see the batch interface in hhmpn/engine.py).

        Every modality of the model must be in the batch; other modalities in the batch are ignored.

        Returns a dict with
            ``logits`` (B, L): W^o_i . u_i^T, eq. (17) before the sigmoid;
            ``round_logits`` (B, T, L): the same projection of u^1 .. u^T (last = ``logits``);
            ``f2l_attention``: modality -> (B, T, L, S_m), alpha of eq. (11) per round (uniform over the
                real nodes in the w/o-F2L ablation);
            ``l2l_attention``: modality -> (B, T, L, L), alpha of eq. (13) per round (None w/o L2L);
            ``m2l_weights`` (B, T, L, |M|): alpha_i^m of eq. (16), modalities in ``modalities`` order
                (None w/o M2L);
            ``modalities``: the modality order; ``feature_states``: modality -> z^m (B, S_m, d);
            ``f2f_attention`` (only if requested): per layer, receiver -> sender -> (B, S_r, S_s).
        """
        z, sizes, real, f2f_attention = self._encode_packed(batch, return_f2f_attention)
        batch_size = z.shape[0]
        n_mod, n_lab = len(self.modalities), self.num_labels
        present = torch.stack([mask.any(dim=1) for mask in real], dim=1)  # (B, M)
        # Copy m of the labels reads the real nodes of modality m only: one mask per copy over the
        # packed nodes, (B, M, 1, S), so all copies are scored against the nodes in one product.
        offsets = [sum(sizes[:m]) for m in range(n_mod + 1)]
        block = torch.zeros(n_mod, offsets[-1], dtype=torch.bool, device=z.device)
        for m in range(n_mod):
            block[m, offsets[m]:offsets[m + 1]] = True
        copy_masks = (block[None] & torch.cat(real, dim=1)[:, None, :])[:, :, None, :]
        all_labels = torch.ones(batch_size * n_mod, n_lab, dtype=torch.bool, device=present.device)

        u = self.label_embedding.unsqueeze(0).expand(batch_size, -1, -1)  # u^0 = W_y
        round_logits, m2l_weights = [], []
        f2l_attention: dict[str, list[Tensor]] = {name: [] for name in self.modalities}
        l2l_attention: dict[str, list[Tensor]] = {name: [] for name in self.modalities}
        for t in range(self.rounds):
            # u^{m,t} = u^t: every modality copy restarts from the fused state (see docstring).
            # (11)-(12): directed feature-to-label message passing, copy m reading modality m only.
            stacked, alpha = self.f2l[t](u, z, copy_masks)  # (B, M, L, d): u^{m,t'}; alpha (B, M, L, S)
            for index, name in enumerate(self.modalities):
                f2l_attention[name].append(alpha[:, index, :, offsets[index]:offsets[index + 1]])
            if self.l2l:
                # (13)-(14): label-to-label message passing among all label pairs, per modality copy.
                flat = stacked.reshape(batch_size * n_mod, n_lab, self.d)
                flat, alpha = self.l2l[t](flat, flat, all_labels)
                stacked = flat.reshape(batch_size, n_mod, n_lab, self.d)
                alpha = alpha.reshape(batch_size, n_mod, n_lab, n_lab)
                for index, name in enumerate(self.modalities):
                    l2l_attention[name].append(alpha[:, index])
            # (15)-(16) M2L readout (or the sum readout w/o M2L): u^{t+1}.
            u, weights = self.readout[t](stacked, present, u)
            if weights is not None:
                m2l_weights.append(weights)
            round_logits.append(self.project(u))  # (17) before the sigmoid

        outputs = {
            "logits": round_logits[-1],
            "round_logits": torch.stack(round_logits, dim=1),
            "f2l_attention": {name: torch.stack(maps, dim=1) for name, maps in f2l_attention.items()},
            "l2l_attention": (
                {name: torch.stack(maps, dim=1) for name, maps in l2l_attention.items()} if self.l2l else None
            ),
            "m2l_weights": torch.stack(m2l_weights, dim=1) if m2l_weights else None,
            "modalities": self.modalities,
            "feature_states": dict(zip(self.modalities, z.split(sizes, dim=1))),
        }
        if return_f2f_attention:
            outputs["f2f_attention"] = f2f_attention
        return outputs

    def project(self, u: Tensor) -> Tensor:
        """W^o_i . u_i for every label i (eq. 17 without the sigmoid): (B, L, d) -> (B, L)."""
        return (u * self.output_weight).sum(dim=-1)

    # ------------------------------------------------------------------ loss
    def loss(self, outputs: Mapping, batch: Mapping) -> Tensor:
        """J_all = J_out + lambda * sum_{t=1}^{T-1} J_int(t), eqs. (18)-(20).

        Each J is the BCE averaged over labels (eqs. 18-19) and over the samples of the batch.
        """
        labels = batch["labels"].to(outputs["logits"].dtype)
        loss = F.binary_cross_entropy_with_logits(outputs["logits"], labels)  # (18)
        round_logits = outputs["round_logits"]
        for t in range(round_logits.shape[1] - 1):  # rounds 1 .. T-1
            loss = loss + self.lam * F.binary_cross_entropy_with_logits(round_logits[:, t], labels)  # (19)-(20)
        return loss
