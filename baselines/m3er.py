"""M3ER: Multiplicative Multimodal Emotion Recognition (Mittal et al., AAAI 2020), a baseline of Table 2.

Mittal, Bhattacharya, Chandra, Bera, Manocha. "M3ER: Multiplicative Multimodal Emotion Recognition Using
Facial, Textual, and Speech Cues." AAAI 2020. No code was released with the paper, and its full text could
not be consulted here beyond its abstract; the method below follows the paper's three steps as published
(modality check by CCA, proxy feature regeneration, multiplicative fusion) and Liu et al. 2018 ("Learn to
Combine Modalities in Multimodal Deep Learning"), whose multiplicative combination M3ER modifies. Every
detail we had to choose is listed.

The three steps, generalised from the paper's three modalities (face, text, speech) to the ``|M|``
modalities of the data:

1. **Modality check** (CCA). For every pair ``{m, n}`` of modalities, canonical correlation analysis of
   their sample-level feature vectors (the mean of each modality's nodes) projects both into a shared
   space; a sample whose two projections disagree has an ineffectual (noisy) cue. Per sample, the
   agreement ``rho_mn`` is the cosine between the ``k`` leading canonical variates of ``m`` and of ``n``
   (canonical variates are centred on the training data: this is their uncentred correlation). The
   pair's threshold is ``tau_mn = mean - tau_z * std`` of ``rho_mn`` over the training samples. Modality
   ``m`` is *ineffectual* for a sample when its agreement with every other present modality is below
   threshold (three modalities with one noisy cue: both pairs of the noisy cue fail, each clean cue keeps
   one good pair, exactly the paper's case). A modality with *zero nodes* in a sample (NEMu's songs
   without comments or images) is ineffectual by definition. If no present modality of a sample is
   effective (e.g. two modalities that disagree) none is replaced: the check cannot tell which is noisy.
2. **Proxy features.** An ineffectual modality ``m`` is replaced by a proxy regenerated from the effective
   ones by linear maps, as in the paper: ``f_m' = mean over effective n of T_{n->m} f_n``, ``T_{n->m}`` the
   regularised least-squares regression of ``f_m`` on ``f_n`` over the training samples (closed form, from
   the same statistics as the CCA). The proxy replaces the modality's node list by one node.
3. **Multiplicative fusion.** Each modality has its own network and its own L-unit sigmoid prediction
   ``p_m``. Training uses M3ER's modified multiplicative loss ``-sum_m (p_m^y)^(beta / (|M| - 1)) log p_m^y``
   (the inverse of Liu et al.'s weighting: it boosts the cue that is already right about the sample and so
   suppresses the others, per sample; ``weighting="liu"`` gives Liu et al.'s
   ``prod_{n != m} (1 - p_n^y)^(beta / (|M| - 1))``). The weights are constants (no gradient flows
   through them), otherwise ``-p^g log p -> 0`` as ``p -> 0`` would reward confident mistakes.

Multi-label adaptation of ``p^y`` (the probability a modality gives the sample's true class): here the
probability it gives the sample's true *label set*, normalised per label, ``p_m^y = exp(-mean_l BCE_ml)``
(the geometric mean over labels of the probability of each label's true state), and ``-log p_m^y`` is the
modality's BCE averaged over labels. The paper's ``p^y`` is one number per sample and modality, and so is
this one. A per-label weight (each label's own ``p``) was tried too: with sparse labels it weighs the easy
negatives up and the rare positives down, and it scored lower on the embedded samples (test micro-F1
0.70 vs 0.73 on 160 songs, 0.51 vs 0.66 on 240, quick configuration).

Prediction: the multiplicative combination of the modality experts, a product of experts that counts the
label prior once, ``logit p = logit p0 + sum_m (logit p_m - logit p0)`` over the modalities available for
the sample (present or regenerated), with ``p0`` the label frequencies of the training split (from
``DataInfo.train_labels``). This is an L-unit linear layer (one block per modality representation) and a
sigmoid, the output the seed paper gives every multi-modal baseline; an expert at the prior changes
nothing, so the per-sample suppression of a cue carries over to prediction. (The plain mean of the
experts' logits was tried: every uninformative expert then pulls each label towards its prior; test
micro-F1 0.44 vs 0.81 and 0.41 vs 0.62 on the two samples, same trained models.)

When the CCA statistics are fitted (the factory sees no features, only ``DataInfo``): online, during the
first pass over the training loader. The model knows the training-set size ``n_train`` (from
``info.train_labels``); until it has seen ``n_train`` training samples it accumulates the first and second
moments of the pooled features (exactly one epoch of the shared engine), then solves CCA and the proxy
regressions; over the next ``n_train`` training samples it accumulates each pair's ``rho`` and fixes the
thresholds. So proxies for missing modalities are used from the second epoch on, the CCA check from the
third. The moments are fixed statistics of the training inputs (features are not learned), never of valid
or test. Without ``n_train`` (the model used on its own) each phase ends at the first evaluation
(``model.eval()`` forward) after it has seen training data. The fit is in the state dict.

Other choices and deviations:

* **Regularised CCA.** CCA and regression run on standardised features (per-feature z-scores of the
  training moments), keep the ``cca_pca`` leading principal components of each modality and shrink the
  correlation matrices towards the identity (``cca_shrinkage``). Without this, NEMu's image features (1280
  or 2048 dimensions, against a few hundred songs in the sample) give spurious near-perfect canonical
  correlations on the training songs, and the thresholds fitted there flagged most test songs' images.
* **Per-modality networks.** One LSTM per modality over its nodes, its outputs mean-pooled over the real
  nodes (``readout="last"``: its last state), dropout, and the modality's L-unit output layer. The raw
  MFCCs span hundreds; the inputs are the benchmark protocol's (each modality standardised per dimension
  on the training split by ``split_datasets``), so the networks add no normaliser of their own (the
  running standardisation of an earlier version duplicated it and is gone). The paper's sub-networks and fusion details between time steps could not be checked; a
  fusion between aligned time steps would not apply to unaligned node lists anyway.
* ``beta`` and the network sizes are not known to us; ``beta = 1``.
* ``|M| = 1``: no pair, no check, no proxies; the loss weight is 1 (plain BCE).

Configurations: ``paper`` (hidden 128, beta 1, 8 canonical components from 64 principal components per
modality, Adam lr 1e-3, batch 32, 50 epochs; clipping at 10 as the shared protocol) and ``quick`` (hidden
64, 16 principal components, stronger shrinkage for the small sample, batch 16). Epochs and learning rate follow the benchmark's one tuning rule (``mmer.tuning``): paper 50
epochs at lr 1e-3 as above; quick 10 epochs (15 before the rule) at the shared 3e-3 (6e-3 before).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations, permutations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmer.metrics import DEFAULT_THRESHOLD
from mmer.tuning import neural_budget
from mmer.neural import check_modalities, masked_mean, run_rnn, zero_padding
from mmer.registry import DataInfo, model_kwargs, register

CITATION = ("Mittal, Bhattacharya, Chandra, Bera and Manocha, M3ER: Multiplicative Multimodal Emotion Recognition "
            "Using Facial, Textual, and Speech Cues, AAAI 2020")
WEIGHTINGS = ("m3er", "liu")
PHASE_MOMENTS, PHASE_AGREEMENT, PHASE_ACTIVE = 0, 1, 2


def _buffer(module: nn.Module, name: str, tensor: Tensor, persistent: bool = True) -> None:
    module.register_buffer(name, tensor, persistent=persistent)


class ModalityCheck(nn.Module):
    """CCA modality check and proxy regeneration, fitted online on the training batches.

    Statistics (non-persistent, float64): per modality the count, sum and sum of outer products of its
    pooled feature over the samples where it is present; per unordered pair the co-present count, sums
    and cross products; in phase 1 the sum and sum of squares of each pair's agreement ``rho``.
    Fitted results (persistent, in the state dict): ``phase``, per modality mean and std, per ordered pair
    the canonical projection of the source side and the proxy regression, per pair the threshold.
    """

    def __init__(self, modality_dims: Mapping[str, int], *, components: int = 8, shrinkage: float = 0.1,
                 tau_z: float = 1.0, n_train: int | None = None, pca: int | None = None):
        super().__init__()
        self.modality_dims = dict(modality_dims)
        self.modalities = tuple(self.modality_dims)
        self.pairs = tuple(combinations(self.modalities, 2))
        self.ordered_pairs = tuple(permutations(self.modalities, 2))
        self.shrinkage, self.tau_z = float(shrinkage), float(tau_z)
        self.n_train = int(n_train) if n_train else None
        self.pca = {m: dim if pca is None else max(1, min(int(pca), dim)) for m, dim in self.modality_dims.items()}
        self.components = {self.key(m, n): min(int(components), self.pca[m], self.pca[n]) for m, n in self.pairs}
        _buffer(self, "phase", torch.tensor(PHASE_MOMENTS if self.pairs else PHASE_ACTIVE))
        _buffer(self, "seen", torch.tensor(0), persistent=False)  # training samples seen in this phase
        self.stats, self.fitted = nn.Module(), nn.Module()
        for m, dim in self.modality_dims.items():
            _buffer(self.stats, f"count_{m}", torch.zeros((), dtype=torch.float64), False)
            _buffer(self.stats, f"sum_{m}", torch.zeros(dim, dtype=torch.float64), False)
            _buffer(self.stats, f"outer_{m}", torch.zeros(dim, dim, dtype=torch.float64), False)
            _buffer(self.fitted, f"mean_{m}", torch.zeros(dim))
            _buffer(self.fitted, f"std_{m}", torch.ones(dim))
        for m, n in self.pairs:
            pair, (dm, dn) = self.key(m, n), (self.modality_dims[m], self.modality_dims[n])
            _buffer(self.stats, f"count_{pair}", torch.zeros((), dtype=torch.float64), False)
            _buffer(self.stats, f"sum_{pair}_{m}", torch.zeros(dm, dtype=torch.float64), False)
            _buffer(self.stats, f"sum_{pair}_{n}", torch.zeros(dn, dtype=torch.float64), False)
            _buffer(self.stats, f"cross_{pair}", torch.zeros(dm, dn, dtype=torch.float64), False)
            _buffer(self.stats, f"rho_{pair}", torch.zeros(3, dtype=torch.float64), False)  # count, sum, sum sq
            _buffer(self.fitted, f"tau_{pair}", torch.tensor(-float("inf")))
            _buffer(self.fitted, f"correlations_{pair}", torch.zeros(self.components[pair]))
        for m, n in self.ordered_pairs:
            k = self.components[self.key(*sorted((m, n), key=self.modalities.index))]
            _buffer(self.fitted, f"projection_{self.key(m, n)}", torch.zeros(self.modality_dims[m], k))
            _buffer(self.fitted, f"regression_{self.key(m, n)}",
                    torch.zeros(self.modality_dims[m], self.modality_dims[n]))

    @staticmethod
    def key(m: str, n: str) -> str:
        return f"{m}->{n}"

    def _stat(self, name: str) -> Tensor:
        return getattr(self.stats, name)

    def _fit(self, name: str) -> Tensor:
        return getattr(self.fitted, name)

    # ---------------------------------------------------------------- statistics
    @torch.no_grad()
    def accumulate(self, pooled: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> None:
        """Add a training batch to the current phase's statistics, and finish the phase when complete."""
        if self.phase.item() == PHASE_MOMENTS:
            for m in self.modalities:
                x = pooled[m][present[m]].double()
                self._stat(f"count_{m}").add_(x.shape[0])
                self._stat(f"sum_{m}").add_(x.sum(dim=0))
                self._stat(f"outer_{m}").add_(x.T @ x)
            for m, n in self.pairs:
                both = present[m] & present[n]
                xm, xn, pair = pooled[m][both].double(), pooled[n][both].double(), self.key(m, n)
                self._stat(f"count_{pair}").add_(xm.shape[0])
                self._stat(f"sum_{pair}_{m}").add_(xm.sum(dim=0))
                self._stat(f"sum_{pair}_{n}").add_(xn.sum(dim=0))
                self._stat(f"cross_{pair}").add_(xm.T @ xn)
        elif self.phase.item() == PHASE_AGREEMENT:
            rho = self.agreement(pooled)
            for m, n in self.pairs:
                both, pair = present[m] & present[n], self.key(m, n)
                values = rho[pair][both].double()
                self._stat(f"rho_{pair}").add_(torch.stack([torch.ones_like(values).sum(), values.sum(),
                                                            (values ** 2).sum()]))
        else:
            return
        self.seen.add_(next(iter(pooled.values())).shape[0])
        if self.n_train is not None and self.seen.item() >= self.n_train:
            self.finish_phase()

    @torch.no_grad()
    def finish_phase(self) -> None:
        """Solve the current phase from its statistics and move on (no-op once active)."""
        if self.phase.item() == PHASE_MOMENTS:
            self._solve_cca()
        elif self.phase.item() == PHASE_AGREEMENT:
            for m, n in self.pairs:
                pair = self.key(m, n)
                count, total, squares = self._stat(f"rho_{pair}").tolist()
                if count >= 2:
                    mean = total / count
                    std = max(squares / count - mean * mean, 0.0) ** 0.5
                    self._fit(f"tau_{pair}").fill_(mean - self.tau_z * std)
        else:
            return
        self.phase.add_(1)
        self.seen.zero_()

    def _shrunk_correlation(self, m: str) -> tuple[Tensor, Tensor, Tensor]:
        """(mean, std, shrunk correlation matrix) of modality m's pooled features, float64."""
        count = self._stat(f"count_{m}").clamp_min(1.0)
        mean = self._stat(f"sum_{m}") / count
        covariance = self._stat(f"outer_{m}") / count - torch.outer(mean, mean)
        std = covariance.diagonal().clamp_min(0.0).sqrt()
        std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant features: left unscaled
        correlation = covariance / torch.outer(std, std)
        eye = torch.eye(len(mean), dtype=correlation.dtype, device=correlation.device)
        return mean, std, (1.0 - self.shrinkage) * correlation + self.shrinkage * eye

    def _solve_cca(self) -> None:
        moments, roots = {}, {}
        for m in self.modalities:
            mean, std, shrunk = self._shrunk_correlation(m)
            values, vectors = torch.linalg.eigh(shrunk)  # ascending
            values, vectors = values[-self.pca[m]:].clamp_min(1e-6), vectors[:, -self.pca[m]:]  # leading components
            moments[m] = (mean, std, vectors @ torch.diag(1.0 / values) @ vectors.T)  # R^-1 on the kept components
            roots[m] = vectors @ torch.diag(values.rsqrt())  # whitening into the kept components (d, p)
            self._fit(f"mean_{m}").copy_(mean)
            self._fit(f"std_{m}").copy_(std)
        for m, n in self.pairs:
            pair = self.key(m, n)
            (mean_m, std_m, inverse_m), (mean_n, std_n, inverse_n) = moments[m], moments[n]
            count = self._stat(f"count_{pair}")
            if count.item() < 2:  # never seen together: no projection, no proxy between them
                continue
            # cross-covariance over co-present samples, centred on each modality's own mean
            s_m, s_n = self._stat(f"sum_{pair}_{m}"), self._stat(f"sum_{pair}_{n}")
            cross = (self._stat(f"cross_{pair}") - torch.outer(s_m, mean_n) - torch.outer(mean_m, s_n)) / count \
                + torch.outer(mean_m, mean_n)
            cross = (1.0 - self.shrinkage) * cross / torch.outer(std_m, std_n)
            # CCA: SVD of the whitened cross-correlation
            u, s, vh = torch.linalg.svd(roots[m].T @ cross @ roots[n])
            k = self.components[pair]
            self._fit(f"projection_{self.key(m, n)}").copy_(roots[m] @ u[:, :k])
            self._fit(f"projection_{self.key(n, m)}").copy_(roots[n] @ vh[:k].T)
            self._fit(f"correlations_{pair}").copy_(s[:k])
            # proxy regressions on standardised features: z_n -> z_m and z_m -> z_n (stored as x @ G)
            self._fit(f"regression_{self.key(n, m)}").copy_((cross @ inverse_n).T)
            self._fit(f"regression_{self.key(m, n)}").copy_((cross.T @ inverse_m).T)

    # ---------------------------------------------------------------- use
    def standardised(self, m: str, x: Tensor) -> Tensor:
        return (x - self._fit(f"mean_{m}")) / self._fit(f"std_{m}")

    def agreement(self, pooled: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """{"m->n" per unordered pair: per-sample cosine of the two modalities' canonical variates (B,)}."""
        out = {}
        for m, n in self.pairs:
            u = self.standardised(m, pooled[m]) @ self._fit(f"projection_{self.key(m, n)}")
            v = self.standardised(n, pooled[n]) @ self._fit(f"projection_{self.key(n, m)}")
            out[self.key(m, n)] = F.cosine_similarity(u, v, dim=-1, eps=1e-8)
        return out

    def proxy(self, source: str, target: str, pooled_source: Tensor) -> Tensor:
        """T_{source->target} f_source: the regenerated pooled feature of ``target`` (B, dim_target)."""
        z = self.standardised(source, pooled_source) @ self._fit(f"regression_{self.key(source, target)}")
        return self._fit(f"mean_{target}") + self._fit(f"std_{target}") * z

    def effective(self, pooled: Mapping[str, Tensor], present: Tensor) -> Tensor:
        """(B, |M|) bool: present and not flagged ineffectual by the CCA check (once the check is active)."""
        if self.phase.item() < PHASE_ACTIVE or not self.pairs:
            return present
        rho = self.agreement(pooled)
        index = {m: i for i, m in enumerate(self.modalities)}
        agree = torch.zeros(present.shape[0], len(self.modalities), dtype=torch.bool, device=present.device)
        partners = torch.zeros_like(agree)
        for m, n in self.pairs:
            both = present[:, index[m]] & present[:, index[n]]
            ok = both & (rho[self.key(m, n)] >= self._fit(f"tau_{self.key(m, n)}"))
            for a in (m, n):
                agree[:, index[a]] |= ok
                partners[:, index[a]] |= both
        effective = present & (agree | ~partners)  # nobody to check against: kept
        nothing_left = ~effective.any(dim=1, keepdim=True)
        return torch.where(nothing_left, present, effective)

    def proxies_ready(self) -> bool:
        return bool(self.pairs) and self.phase.item() >= PHASE_AGREEMENT


class M3ER(nn.Module):
    """M3ER over any number of modalities; see the module docstring for the method and deviations.

    Args:
        modality_dims: {modality: feature size}, in the data's order.
        num_labels: L.
        hidden: LSTM width per modality.
        dropout: dropout on LSTM inputs and on each modality's representation.
        beta: the multiplicative loss' exponent numerator (weights ``(.)^(beta / (|M| - 1))``).
        weighting: ``"m3er"`` (boost the reliable cue, M3ER) or ``"liu"`` (Liu et al. 2018).
        cca_components: canonical components per pair used by the check.
        cca_shrinkage: shrinkage of the correlation matrices towards the identity, in [0, 1).
        cca_pca: leading principal components of each modality kept for CCA and regression (None: all).
        tau_z: threshold = mean - tau_z * std of the training agreement.
        n_train: number of training samples (one epoch of statistics per phase); None: phases end at eval.
        label_prior: training frequency of each label (the product of experts' prior); None: 0.5.
        readout: ``"mean"`` (masked mean of the LSTM outputs) or ``"last"`` (its final state).
    """

    def __init__(self, modality_dims: Mapping[str, int], num_labels: int, *, hidden: int = 128, dropout: float = 0.2,
                 beta: float = 1.0, weighting: str = "m3er", cca_components: int = 8, cca_shrinkage: float = 0.1,
                 cca_pca: int | None = None, tau_z: float = 1.0, n_train: int | None = None,
                 label_prior: Sequence[float] | None = None, readout: str = "mean"):
        super().__init__()
        if not modality_dims:
            raise ValueError("M3ER needs at least one modality")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose from {WEIGHTINGS}")
        if readout not in ("last", "mean"):
            raise ValueError(f"unknown readout {readout!r}; choose 'last' or 'mean'")
        self.readout = readout
        if not 0.0 <= cca_shrinkage < 1.0:
            raise ValueError("cca_shrinkage must be in [0, 1)")
        self.modality_dims = {name: int(dim) for name, dim in modality_dims.items()}
        self.modalities = tuple(self.modality_dims)
        self.num_labels = int(num_labels)
        self.beta, self.weighting = float(beta), weighting
        self.check = ModalityCheck(self.modality_dims, components=cca_components, shrinkage=cca_shrinkage,
                                   tau_z=tau_z, n_train=n_train, pca=cca_pca)
        self.input_dropout = nn.Dropout(dropout)
        self.encoders = nn.ModuleDict({m: nn.LSTM(dim, hidden, batch_first=True)
                                       for m, dim in self.modality_dims.items()})
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({m: nn.Linear(hidden, self.num_labels) for m in self.modalities})
        prior = (torch.full((self.num_labels,), 0.5) if label_prior is None
                 else torch.as_tensor(label_prior, dtype=torch.float32))
        if prior.shape != (self.num_labels,):
            raise ValueError(f"label_prior must have {self.num_labels} entries")
        # logit of the label frequencies, clipped away from 0 and 1 (a label never seen in training)
        self.register_buffer("prior_logit", torch.logit(prior.clamp(0.01, 0.99)))

    def prepare(self, batch: Mapping) -> tuple[dict[str, tuple[Tensor, Tensor]], Tensor, Tensor, Tensor]:
        """Modality check and proxy regeneration.

        Returns ({modality: (nodes, mask) after replacement}, present (B, |M|), effective (B, |M|),
        replaced (B, |M|): the modalities whose node list is now one proxy node).
        """
        inputs = check_modalities(batch, self.modality_dims)
        pooled = {m: masked_mean(x, mask) for m, (x, mask) in inputs.items()}
        present = torch.stack([inputs[m][1].any(dim=1) for m in self.modalities], dim=1)
        if self.training:
            self.check.accumulate(pooled, {m: present[:, i] for i, m in enumerate(self.modalities)})
        elif self.check.n_train is None and self.check.seen.item() > 0:
            self.check.finish_phase()
        effective = self.check.effective(pooled, present)
        replaced = torch.zeros_like(present)
        if self.check.proxies_ready():
            for i, m in enumerate(self.modalities):
                proxies, count = 0.0, torch.zeros(present.shape[0], 1, device=present.device)
                for j, n in enumerate(self.modalities):
                    if n != m:
                        use = effective[:, j:j + 1].to(pooled[n].dtype)
                        proxies = proxies + use * self.check.proxy(n, m, pooled[n])
                        count = count + use
                replaced[:, i] = ~effective[:, i] & (count[:, 0] > 0)
                if replaced[:, i].any():
                    x, mask = inputs[m]
                    proxy_nodes = torch.zeros_like(x)
                    proxy_nodes[:, 0] = proxies / count.clamp_min(1.0)
                    proxy_mask = torch.zeros_like(mask)
                    proxy_mask[:, 0] = True
                    swap = replaced[:, i]
                    inputs[m] = (torch.where(swap[:, None, None], proxy_nodes, x),
                                 torch.where(swap[:, None], proxy_mask, mask))
        return inputs, present, effective, replaced

    def forward(self, batch: Mapping) -> dict:
        """``logits`` (B, L): the product of the available modality experts (see the module docstring);
        ``modality_logits`` (B, |M|, L);
        ``available`` (B, |M|): modality used for the sample (effective or regenerated); ``present``,
        ``effective``, ``replaced`` (B, |M|) from the modality check."""
        inputs, present, effective, replaced = self.prepare(batch)
        logits, available = [], []
        for m in self.modalities:
            x, mask = inputs[m]
            x = self.input_dropout(zero_padding(x, mask))
            states, final = run_rnn(self.encoders[m], x, mask)
            summary = final if self.readout == "last" else masked_mean(states, mask)
            logits.append(self.heads[m](self.dropout(summary)))
            available.append(mask.any(dim=1))
        modality_logits = torch.stack(logits, dim=1)  # (B, M, L)
        available = torch.stack(available, dim=1)  # (B, M)
        # product of experts: prior odds times each available expert's likelihood ratio
        weights = available.to(modality_logits.dtype)[..., None]
        fused = self.prior_logit + ((modality_logits - self.prior_logit) * weights).sum(dim=1)
        return {"logits": fused, "modality_logits": modality_logits, "available": available, "present": present,
                "effective": effective, "replaced": replaced}

    @staticmethod
    def true_label_probability(modality_logits: Tensor, labels: Tensor) -> Tensor:
        """``p_m^y`` (B, |M|): the probability modality m gives the sample's true label *set*.

        The single-label ``p^y`` generalised to L independent sigmoid outputs: the likelihood of the label
        vector, normalised per label (geometric mean over labels), ``exp(-mean_l BCE(z_ml, y_l))``.
        """
        nll = F.binary_cross_entropy_with_logits(modality_logits, labels[:, None, :].expand_as(modality_logits),
                                                 reduction="none")
        return torch.exp(-nll.mean(dim=-1))

    def modality_weights(self, modality_logits: Tensor, labels: Tensor, available: Tensor) -> Tensor:
        """The multiplicative loss' per-sample, per-modality weights (B, |M|), without gradient."""
        with torch.no_grad():
            m_count = len(self.modalities)
            if m_count == 1:
                return torch.ones(modality_logits.shape[:2], dtype=modality_logits.dtype, device=modality_logits.device)
            exponent = self.beta / (m_count - 1)
            p_true = self.true_label_probability(modality_logits, labels)
            if self.weighting == "m3er":  # M3ER: (p_m^y)^(beta / (M - 1)), boosts the cue that is right
                return p_true ** exponent
            # Liu et al.: prod over the other available modalities of (1 - p_n^y)^(beta / (M - 1))
            wrong = torch.where(available, 1.0 - p_true, torch.ones_like(p_true)).clamp_min(1e-12).log()
            return torch.exp((wrong.sum(dim=1, keepdim=True) - wrong) * exponent)

    def loss(self, outputs: Mapping, batch: Mapping) -> Tensor:
        """Multiplicative combination loss: sum over available modalities of weight x (-log p_m^y), where
        ``-log p_m^y`` is the modality's BCE averaged over labels; averaged over the samples."""
        modality_logits, available = outputs["modality_logits"], outputs["available"]
        labels = batch["labels"].to(modality_logits.dtype)
        nll = F.binary_cross_entropy_with_logits(modality_logits, labels[:, None, :].expand_as(modality_logits),
                                                 reduction="none").mean(dim=-1)  # -log p_m^y, (B, M)
        weights = self.modality_weights(modality_logits, labels, available) * available.to(nll.dtype)
        return (weights * nll).sum(dim=1).mean()


# ------------------------------------------------------------------------------------------------
# registry entry

PAPER = {"hidden": 128, "dropout": 0.2, "readout": "mean", "beta": 1.0, "weighting": "m3er", "cca_components": 8,
         "cca_shrinkage": 0.1, "cca_pca": 64, "tau_z": 1.0, "lr": 1e-3, "batch_size": 32, "clip": 10.0,
         "threshold": DEFAULT_THRESHOLD} | neural_budget("paper")
QUICK = PAPER | {"hidden": 64, "cca_shrinkage": 0.5, "cca_pca": 16, "batch_size": 16} | neural_budget("quick")


@register("M3ER", group="Multi-modal", citation=CITATION, kind="neural", quick=QUICK, paper=PAPER)
def build(config: dict, info: DataInfo) -> M3ER:
    prior = info.train_labels.mean(axis=0) if len(info.train_labels) else None
    return M3ER(info.modality_dims, info.num_labels, n_train=len(info.train_labels), label_prior=prior,
                **model_kwargs(config))
