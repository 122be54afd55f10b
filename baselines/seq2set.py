"""Seq2Set: deep reinforced sequence-to-set model (Yang, Luo, Ma, Lin and Sun, ACL 2019), early-fused input.

Paper: "A Deep Reinforced Sequence-to-Set Model for Multi-Label Classification", ACL 2019; authors' code:
github.com/lancopku/Seq2Set (``models/seq2seq.py``, ``models/rnn.py``, ``models/attention.py``,
``config.yaml``), built on SGM (Yang et al., COLING 2018), read for details.

Model. A BiLSTM encoder reads the input; an attentional LSTM decoder emits labels one at a time until an
end-of-set token::

    encoder      h_1..h_n = BiLSTM(x_1..x_n); the decoder starts from the final states of both directions
                 (concatenated per layer), as in the authors' code
    decoder      s_t = LSTM(s_{t-1}, e(y_{t-1}))                 (e: label embedding, y_0 = BOS)
    attention    a_t = softmax_n(h_i . W_a s_t),  c_t = sum_i a_t,i h_i   (Luong "general")
                 o_t = dropout(tanh(W_o [c_t ; s_t]))
    output       p(y_t) = softmax(W_s o_t + I_t) over the L labels and EOS, where I_t = -inf on labels
                 already emitted (SGM's mask: a set has no repeats)

Training, in two phases (``mmer.phases.PhasedModule``; the shared engine's epoch count drives it):

1. ``mle`` (the first ``mle_epochs`` epochs): teacher-forced cross-entropy on each sample's labels in a
   fixed order -- descending training-set frequency, then label index, as in SGM -- followed by EOS.
2. ``rl`` (the remaining epochs): self-critical policy gradient. For every sample a label sequence
   y^s is sampled from the decoder and the greedy sequence y^g is decoded; with r = F1 between the
   emitted set and the gold set, the loss is ``-(r(y^s) - r(y^g)) * sum_t log p(y^s_t)`` (averaged over
   the batch), the sum running over the sampled steps up to and including EOS. The reward depends only on
   the *set*, so the order of the pre-training stops mattering.

Evaluation (``forward`` in eval mode): greedy decoding (``beam_size`` = 1) or beam search until EOS;
``"logits"`` is +``SET_LOGIT`` for the decoded labels and -``SET_LOGIT`` for the others, so the engine's
``sigmoid >= 0.5`` reproduces the decoded set exactly. ``"token_logits"`` and the eval ``loss`` are the
teacher-forced cross-entropy (what the engine reports as validation loss).

Input: the early-fused sequence of ``mmer.early_fusion.EarlyFusionSequence`` (each modality's nodes
projected to a common width with a learned linear map plus a modality embedding, concatenated in manifest
order), packed so that padding never enters the encoder; the decoder's attention ignores padding.

Deviations from the paper, and why:

* **Input tokens** are early-fused modality nodes instead of word embeddings (seed paper's protocol);
  the fusion width ``d`` plays the word-embedding size.
* **No input normaliser of its own.** The fused nodes are the benchmark protocol's standardised inputs
  (raw modality features differ in scale by three orders of magnitude and would saturate the LSTM gates;
  see ``baselines.lsan``); the LayerNorm an earlier version put on the fused nodes duplicated it and is gone.
* **One learning rate for both phases.** The authors fine-tune with lr 1e-5 after pre-training (their
  ``config.yaml``); the shared engine owns one Adam optimiser with one ``lr`` for all epochs and the
  phase switch happens inside the model, so both phases use ``lr`` (and Adam's moments carry over).
* **Phase lengths** are a number of epochs (``mle_epochs``) inside the engine's fixed epoch budget, and
  the checkpoint is the best validation micro-F1 over *all* epochs of both phases (the authors restore
  the best pre-trained checkpoint by hand and then train the RL model).
* **Reward details.** F1 of two empty sets is 1 (the authors' scikit-learn call gives 0); the log-
  probabilities after the sampled EOS are not counted (the authors' code sums all ``max_tgt_len`` steps,
  including tokens sampled after EOS). The maximal length is L + 1 steps (every label, then EOS), which
  the repeat mask guarantees to end.
* **Decoding.** Quick runs decode greedily; the paper configuration uses beam search (width 10 in the
  authors' configuration), scoring a hypothesis by the sum of its token log-probabilities (no length
  penalty).
* **Sizes** (paper configuration) follow the authors' ``config.yaml``: label embedding 256, encoder
  256 per direction, decoder 512, 2 layers, dropout 0.5, batch 64, gradient clipping at norm 8, 10 RL
  epochs, beam 10, word-embedding size 256 (here the fusion width ``d``); lr 3e-4 (SGM's pre-training
  rate) for both phases and 20 pre-training epochs are our choices.
* **Epochs** follow the benchmark's one tuning rule (``mmer.tuning``): the paper profile trains 50 epochs
  (20 pre-training + 30 RL; the authors' 10 RL epochs, 30 in all before the rule), quick 10 (7 + 3; 16 + 6
  at lr 3e-3 before the rule) at the shared lr 3e-3; the best validation epoch over both phases is kept.
* **Zero-node samples**: the encoder runs on one zero vector whose outputs are masked, the attention
  context is zero, and decoding proceeds from the biases (no NaN).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mmer.early_fusion import EarlyFusionSequence
from mmer.metrics import DEFAULT_THRESHOLD
from mmer.tuning import neural_budget
from mmer.neural import masked_softmax, run_packed
from mmer.phases import PhasedModule
from mmer.registry import DataInfo, model_kwargs, register

CITATION = ("Yang, Luo, Ma, Lin and Sun, A Deep Reinforced Sequence-to-Set Model for Multi-Label "
            "Classification, ACL 2019")
#: |logit| given to decoded / not decoded labels in eval mode (sigmoid(20) = 1 - 2e-9).
SET_LOGIT = 20.0
NEG_INF = float("-inf")


def set_f1(predicted: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Per-row F1 of two 0/1 (N, L) label sets; two empty sets score 1."""
    predicted, gold = predicted.float(), gold.float()
    hits = (predicted * gold).sum(-1)
    size = predicted.sum(-1) + gold.sum(-1)
    return torch.where(size > 0, 2 * hits / size.clamp_min(1), torch.ones_like(size))


def frequency_order(train_labels: np.ndarray | None, num_labels: int) -> list[int]:
    """Label indices by descending training frequency (ties: lower index first): the pre-training order."""
    if train_labels is None or len(train_labels) == 0:
        return list(range(num_labels))
    counts = np.asarray(train_labels).sum(axis=0)
    return [int(i) for i in np.argsort(-counts, kind="stable")]


class Seq2Set(PhasedModule):
    """Attentional seq2seq label decoder trained by MLE then self-critical policy gradient."""

    def __init__(self, modality_dims: dict[str, int], num_labels: int, *, label_order: list[int] | None = None,
                 d: int = 256, emb_size: int = 256, encoder_hidden: int = 256, num_layers: int = 2,
                 dropout: float = 0.5, mle_epochs: int = 20, beam_size: int = 1):
        super().__init__((("mle", int(mle_epochs)), ("rl", None)))
        L = num_labels
        self.num_labels, self.num_layers, self.beam_size = L, num_layers, int(beam_size)
        self.eos = L  # output vocabulary: labels 0..L-1, then EOS
        self.bos = L  # input vocabulary: labels 0..L-1, then BOS
        order = list(range(L)) if label_order is None else [int(i) for i in label_order]
        if sorted(order) != list(range(L)):
            raise ValueError("label_order must be a permutation of the label indices")
        rank = torch.empty(L, dtype=torch.long)
        rank[torch.tensor(order)] = torch.arange(L)
        self.register_buffer("label_rank", rank, persistent=False)  # position of each label in the order

        hidden = 2 * encoder_hidden  # decoder width = both encoder directions (authors: 256 -> 512)
        self.fusion = EarlyFusionSequence(modality_dims, d)
        self.encoder = nn.LSTM(d, encoder_hidden, num_layers=num_layers, batch_first=True, bidirectional=True,
                               dropout=dropout if num_layers > 1 else 0.0)
        self.embedding = nn.Embedding(L + 1, emb_size)
        self.cells = nn.ModuleList(nn.LSTMCell(emb_size if i == 0 else hidden, hidden) for i in range(num_layers))
        self.attn_in = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(2 * hidden, hidden)
        self.score = nn.Linear(hidden, L + 1)
        self.dropout = nn.Dropout(dropout)

    # --- encoder / decoder pieces -----------------------------------------------------------------

    def encode(self, batch):
        nodes, mask = self.fusion(batch)
        context, mask, (h, c) = run_packed(self.encoder, self.dropout(nodes), mask)
        B = context.shape[0]

        def merge(x):  # (layers*2, B, H) -> (layers, B, 2H): both directions of each layer side by side
            return x.view(self.num_layers, 2, B, -1).transpose(1, 2).reshape(self.num_layers, B, -1)

        return context, mask, (merge(h), merge(c))

    def step(self, token, state, context, mask, used):
        """One decoder step: scores (N, L+1) with emitted labels masked, new state, attention weights."""
        x = self.embedding(token)
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            h, c = cell(x, (state[0][i], state[1][i]))
            hs.append(h)
            cs.append(c)
            x = self.dropout(h) if i + 1 < len(self.cells) else h
        weights = masked_softmax(torch.einsum("bnh,bh->bn", context, self.attn_in(x)), mask, dim=-1)
        attended = torch.einsum("bn,bnh->bh", weights, context)
        out = self.dropout(torch.tanh(self.attn_out(torch.cat([attended, x], dim=-1))))
        scores = self.score(out)
        scores = torch.cat([scores[:, :-1].masked_fill(used, NEG_INF), scores[:, -1:]], dim=-1)
        return scores, (torch.stack(hs), torch.stack(cs)), weights

    def target_sequence(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(targets (B, T) label indices in the fixed order then EOS, padded with -1; lengths (B,))."""
        present = labels > 0.5
        B, L = present.shape
        # sort key: rank in the order for present labels, L (after all) for absent ones
        key = torch.where(present, self.label_rank[None, :].expand(B, L), torch.full_like(present, L, dtype=torch.long))
        ranked = torch.sort(key, dim=1, stable=True)
        counts = present.sum(1)
        T = int(counts.max()) + 1 if B else 1
        positions = torch.arange(T, device=labels.device)[None, :]
        targets = torch.full((B, T), -1, dtype=torch.long, device=labels.device)
        seq = ranked.indices[:, :T] if T <= L else F.pad(ranked.indices, (0, T - L))
        targets = torch.where(positions < counts[:, None], seq, targets)
        targets = torch.where(positions == counts[:, None], torch.full_like(targets, self.eos), targets)
        return targets, counts + 1

    def teacher_forced(self, encoded, targets):
        """Scores (B, T, L+1) of the target tokens under teacher forcing with the repeat mask."""
        context, mask, state = encoded
        B, T = targets.shape
        token = torch.full((B,), self.bos, dtype=torch.long, device=targets.device)
        used = torch.zeros(B, self.num_labels, dtype=torch.bool, device=targets.device)
        scores = []
        for t in range(T):
            s, state, _ = self.step(token, state, context, mask, used)
            scores.append(s)
            target = targets[:, t]
            is_label = (target >= 0) & (target < self.num_labels)
            safe = torch.where(is_label, target, torch.zeros_like(target))
            used = used | (F.one_hot(safe, self.num_labels).bool() & is_label[:, None])
            token = torch.where(is_label, target, torch.full_like(target, self.bos))
        return torch.stack(scores, dim=1)

    def decode(self, encoded, *, sample: bool = False):
        """Greedy (or sampled) decoding: (label sets (B, L) bool, summed log-probability (B,))."""
        context, mask, state = encoded
        B, device = context.shape[0], context.device
        token = torch.full((B,), self.bos, dtype=torch.long, device=device)
        used = torch.zeros(B, self.num_labels, dtype=torch.bool, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        log_prob = torch.zeros(B, device=device)
        for _ in range(self.num_labels + 1):
            scores, state, _ = self.step(token, state, context, mask, used)
            logp = F.log_softmax(scores, dim=-1)
            if sample:
                choice = torch.multinomial(logp.detach().exp(), 1).squeeze(1)
            else:
                choice = logp.argmax(-1)
            chosen_logp = logp.gather(1, choice[:, None]).squeeze(1)
            log_prob = log_prob + torch.where(done, torch.zeros_like(chosen_logp), chosen_logp)
            is_label = (choice < self.num_labels) & ~done
            used = used | (F.one_hot(choice.clamp_max(self.num_labels - 1), self.num_labels).bool() & is_label[:, None])
            done = done | (choice == self.eos)
            token = torch.where(is_label, choice, torch.full_like(choice, self.bos))
            if bool(done.all()):
                break
        return used, log_prob

    def beam_search(self, encoded, beam_size: int):
        """Beam search over label sequences until EOS: the best hypothesis' label set (B, L) bool."""
        context, mask, (h, c) = encoded
        B, K, L, device = context.shape[0], beam_size, self.num_labels, context.device
        V = L + 1

        def tile(x, dim):  # repeat each sample K times along ``dim``
            return x.repeat_interleave(K, dim=dim)

        context, mask, state = tile(context, 0), tile(mask, 0), (tile(h, 1), tile(c, 1))
        score = torch.full((B, K), NEG_INF, device=device)
        score[:, 0] = 0.0  # one live hypothesis at the start
        used = torch.zeros(B * K, L, dtype=torch.bool, device=device)
        done = torch.zeros(B * K, dtype=torch.bool, device=device)
        token = torch.full((B * K,), self.bos, dtype=torch.long, device=device)
        for _ in range(L + 1):
            scores, state, _ = self.step(token, state, context, mask, used)
            logp = F.log_softmax(scores, dim=-1)
            finished = torch.full_like(logp, NEG_INF)
            finished[:, self.eos] = 0.0  # a finished hypothesis only "continues" with a free EOS
            logp = torch.where(done[:, None], finished, logp)
            total = (score.view(B * K, 1) + logp).view(B, K * V)
            score, flat = total.topk(K, dim=1)
            parent = (flat // V) + torch.arange(B, device=device)[:, None] * K
            choice = (flat % V).view(-1)
            parent = parent.view(-1)
            state = (state[0][:, parent], state[1][:, parent])
            used, done = used[parent], done[parent]
            is_label = (choice < L) & ~done
            used = used | (F.one_hot(choice.clamp_max(L - 1), L).bool() & is_label[:, None])
            done = done | (choice == self.eos)
            token = torch.where(is_label, choice, torch.full_like(choice, self.bos))
            if bool(done.all()):
                break
        best = score.argmax(dim=1) + torch.arange(B, device=device) * K
        return used[best]

    # --- engine interface ---------------------------------------------------------------------------

    def forward(self, batch) -> dict:
        labels = batch["labels"]
        if self.training:
            self.begin_training_step()
        encoded = self.encode(batch)
        outputs: dict = {}
        if self.training and self.phase == "rl":
            sampled, log_prob = self.decode(encoded, sample=True)
            with torch.no_grad():
                greedy, _ = self.decode(encoded, sample=False)
            outputs.update(sampled=sampled, greedy=greedy, log_prob=log_prob)
            decoded = sampled
        else:
            targets, _ = self.target_sequence(labels)
            outputs.update(token_logits=self.teacher_forced(encoded, targets), targets=targets)
            if self.training:
                decoded = outputs["token_logits"][..., :-1].detach().amax(dim=1) > 0  # by-product, unused
            elif self.beam_size > 1:
                decoded = self.beam_search(encoded, self.beam_size)
            else:
                decoded, _ = self.decode(encoded, sample=False)
        outputs["logits"] = torch.where(decoded, SET_LOGIT, -SET_LOGIT).to(labels.dtype)
        return outputs

    def loss(self, outputs: dict, batch) -> torch.Tensor:
        if "log_prob" in outputs:  # self-critical policy gradient
            gold = batch["labels"] > 0.5
            advantage = set_f1(outputs["sampled"], gold) - set_f1(outputs["greedy"], gold)
            return -(advantage.detach() * outputs["log_prob"]).mean()
        scores, targets = outputs["token_logits"], outputs["targets"]
        return F.cross_entropy(scores.reshape(-1, scores.shape[-1]), targets.reshape(-1), ignore_index=-1)


PAPER = {"d": 256, "emb_size": 256, "encoder_hidden": 256, "num_layers": 2, "dropout": 0.5, "mle_epochs": 20,
         "beam_size": 10, "lr": 3e-4, "batch_size": 64, "clip": 8.0, "threshold": DEFAULT_THRESHOLD} | neural_budget("paper")
#: Small widths for CPU smoke runs: 7 of the rule's 10 epochs pre-training, then 3 of policy gradient, greedy decoding.
QUICK = {"d": 64, "emb_size": 32, "encoder_hidden": 48, "num_layers": 1, "dropout": 0.2, "mle_epochs": 7,
         "beam_size": 1, "batch_size": 16, "clip": 10.0, "threshold": DEFAULT_THRESHOLD} | neural_budget("quick")


@register("Seq2Set", group="Linguistic", citation=CITATION, kind="neural", quick=QUICK, paper=PAPER)
def make_seq2set(config: dict, info: DataInfo) -> Seq2Set:
    kwargs = model_kwargs(config)
    kwargs.setdefault("label_order", frequency_order(info.train_labels, info.num_labels))
    return Seq2Set(info.modality_dims, info.num_labels, **kwargs)
