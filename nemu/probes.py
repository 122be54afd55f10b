"""The latent layer of the embedded sample: label sets, tags, and where each label's evidence is planted.

``nemu.sample`` renders songs (lyrics, comments, audio, images) from what this module draws per song; this
module decides *what* is planted and computes, from the same latent variables, the best any model could do.

Probes (issue 22): each sample is generated under one *probe*, a plan that gives every label one mechanism.

==============  ================================================================================================
probe           mechanism of its labels
==============  ================================================================================================
``linear``      today's additive signal (:data:`TRACE_MODALITIES`): each label leaves an independent trace in
                each of its modalities with probability :data:`TRACE_PROB` (spurious :data:`SPURIOUS_PROB`),
                so "any trace present" is the best rule; byte-identical to the sample before probes existed.
``interaction`` cross-modal AND/OR: six groups of two labels over two modalities; each group has two cue keys
                in each of its modalities, each present per song with :data:`INTERACTION_CUE_PROB`; the
                group's first label is ``(a1 & b1) | (a2 & b2)``, its second ``(a1 & b2) | (a2 & b1)``.
                Neither is additive in the four cues (the two positives and the two negatives of each have the
                same sum), and one modality alone sees half of each conjunction.  A present label's tag is
                dropped with :data:`TAG_DROP_PROB` (real tags are incomplete).
``needle``      ten labels leave one cue group in ONE node (a comment or a lyric line) among 30-40 nodes of
                that modality (:data:`NEEDLE_NODES`), with single decoy cue words of every needle key scattered
                over the other nodes of every song (:data:`NEEDLE_DECOYS`), so mean pooling dilutes the needle
                into the decoys; Relaxed and Quiet keep linear traces (audio, images) as controls.
``cooccurrence`` four labels leave no trace and follow from others (:data:`FOLLOWERS`); the rest are linear.
``unreliable``  every label linear; per song at most one modality is missing (no nodes) or replaced by another
                song's (a song drawn from the same generator, not in the sample), at :data:`FAULT_RATES`.
``null``        labels drawn as always, but every cue is planted independently of them (at each cue's
                marginal rate under ``linear``): labels are independent of every feature.
``mixture``     the default: mechanisms per label (:data:`MIXTURE_PLAN`, written in the card) and the faults of
                ``unreliable`` per song.
==============  ================================================================================================

Known answers.  :func:`posterior` gives, per song and label, the probability of the tag given the generator's
latent variables that a model could in principle recover from the song's features (the cues planted in each
modality, which modality is missing; not the replaced modality's identity, which is marginalised at its rate).
It is exact per label given that label's own evidence, with two approximations written here: the label
affinities make other labels' evidence slightly informative (ignored), and a follower's parents are treated
as independent.  :func:`ceiling_of` thresholds the posterior at the one threshold of :data:`THRESHOLD_GRID`
with the best micro-F1 over the *samples* (songs with at least one emotion tag, the songs a build keeps), the
rule a model's validation threshold would follow, so that on ``null`` the ceiling is a constant label set
(per-label accuracy would predict nothing there, below every constant baseline).  :func:`constant_baseline`
is the best constant label set by micro-F1 over the same songs: the k most frequent labels for the best k (for
a fixed size, the most frequent labels maximise the true positives, so this is the best constant set).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from nemu.labels import LABEL_NAMES, NEMU_LABELS

MODALITIES = ("lyrics", "comments", "audio", "images")
PROBES = ("interaction", "needle", "cooccurrence", "unreliable", "null", "linear")
DEFAULT_PROBE = "mixture"
PROBE_CHOICES = (*PROBES, DEFAULT_PROBE)
LINEAR = "linear"
#: Names drawn per sample for artists (nemu.sample draws a song's artist from them before its labels).
ARTISTS = 60
#: Candidate thresholds of the ceiling (mmer.metrics.THRESHOLD_GRID's, which this layer cannot import).
THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))
CEILING_KEYS = ("micro_f1", "macro_f1", "accuracy", "hamming_loss")

# --- label statistics -------------------------------------------------------------------------------

# Relative frequency of each label (NetEase-like: sad/missing/healing/quiet songs dominate, upbeat rare).
LABEL_WEIGHTS: dict[str, float] = {
    "Sad": 0.16, "Miss": 0.13, "Healing": 0.12, "Quiet": 0.12, "Lonely": 0.09, "Nostalgic": 0.08,
    "Moving": 0.08, "Romantic": 0.06, "Relaxed": 0.06, "Happy": 0.05, "Fresh": 0.035, "Excited": 0.03,
}
# Multiplier on a label's weight once the other label of the pair is already drawn (>1 co-occur, <1 avoid).
LABEL_AFFINITY: dict[tuple[str, str], float] = {
    ("Miss", "Sad"): 6.0, ("Relaxed", "Happy"): 8.0, ("Lonely", "Sad"): 6.0, ("Quiet", "Healing"): 6.0,
    ("Romantic", "Moving"): 8.0, ("Nostalgic", "Miss"): 4.0, ("Fresh", "Healing"): 5.0,
    ("Relaxed", "Quiet"): 3.0, ("Excited", "Happy"): 10.0, ("Lonely", "Quiet"): 2.0,
    ("Happy", "Sad"): 0.1, ("Excited", "Quiet"): 0.05, ("Excited", "Sad"): 0.1, ("Happy", "Lonely"): 0.1,
    ("Excited", "Lonely"): 0.1, ("Fresh", "Sad"): 0.3,
}
NO_EMOTION_PROB = 0.05
# Number of labels for a song that has any: ~30 % one, the rest two to four (paper: 5587 vs 13320).
LABEL_COUNT_PROBS: dict[int, float] = {1: 0.30, 2: 0.38, 3: 0.22, 4: 0.10}
ENGLISH_TAG_PROB = 0.2  # otherwise the NetEase (Chinese) tag name
# Non-emotion NetEase tags (language / style / scene): the builder must drop them.
OTHER_TAGS: dict[str, float] = {
    "华语": 0.30, "流行": 0.20, "民谣": 0.10, "摇滚": 0.06, "古风": 0.08, "轻音乐": 0.06, "电子": 0.04,
    "欧美": 0.04, "粤语": 0.04, "日语": 0.02, "说唱": 0.02, "学习": 0.02, "夜晚": 0.02,
}

# --- planted signal -----------------------------------------------------------------------------------

# Where each label leaves a trace.  Every label has >= 2 modalities; every modality misses some labels.
TRACE_MODALITIES: dict[str, tuple[str, ...]] = {
    "Nostalgic": ("lyrics", "comments"),
    "Fresh": ("comments", "images"),
    "Romantic": ("lyrics", "images"),
    "Sad": ("lyrics", "audio"),
    "Healing": ("comments", "images"),
    "Relaxed": ("audio", "images"),
    "Lonely": ("lyrics", "audio"),
    "Moving": ("comments", "images"),
    "Excited": ("comments", "audio", "images"),
    "Happy": ("comments", "audio"),
    "Quiet": ("audio", "images"),
    "Miss": ("lyrics", "comments"),
}
TRACE_PROB = 0.7  # per song, label present, modality in TRACE_MODALITIES[label]
SPURIOUS_PROB = 0.02  # per song, label absent, same modality: label noise, as in real tags


#: The cue keys each modality can render (nemu.sample's CUE_WORDS, AUDIO_*, IMAGE_TRACES; it checks they agree).
#: A key is named after the label the linear probe ties it to; other probes use keys as neutral cue identities.
CUE_KEYS: dict[str, tuple[str, ...]] = {
    "lyrics": ("Nostalgic", "Fresh", "Romantic", "Sad", "Healing", "Lonely", "Moving", "Excited", "Happy", "Miss"),
    "comments": ("Nostalgic", "Fresh", "Romantic", "Sad", "Healing", "Lonely", "Moving", "Excited", "Happy", "Miss"),
    "audio": ("Sad", "Lonely", "Relaxed", "Happy", "Excited", "Quiet"),
    "images": ("Fresh", "Romantic", "Healing", "Relaxed", "Excited", "Moving", "Quiet"),
}

INTERACTION_CUE_PROB = 0.3  # per song and cue key of an interaction group: a label then has P ~ 0.17
TAG_DROP_PROB = 0.05  # an interaction label's tag is missing although its rule holds
NEEDLE_PROB = 0.9  # a present needle label plants its needle node
NEEDLE_SPURIOUS_PROB = 0.02  # an absent one does (label noise)
NEEDLE_NODES = (30, 40)  # nodes (lyric lines, comments) of a needle modality, every song (inclusive range)
# The mixture's needle among fewer nodes: every song's comments are rendered long, and 30-40 of them per song made
# `make demo` (240 songs, every model) take 25 minutes instead of 15; still one node among 12-16, so mean pooling
# dilutes it four- to eight-fold more than a linear cue of the short layout.
NEEDLE_NODES_MIXTURE = (12, 16)
NEEDLE_DECOYS = (0, 3)  # single decoy words of each needle key per song, in other nodes (inclusive range)
#: Per modality (P(missing), P(replaced by another song's)); at most one fault per song (52 % of songs have one).
#: Assumed, not measured: songs without lyrics (instrumentals) ~8 %, off-topic comment sections, wrong or generic
#: covers and posters the most common replacement.
FAULT_RATES: dict[str, tuple[float, float]] = {
    "lyrics": (0.08, 0.04), "comments": (0.04, 0.08), "audio": (0.03, 0.05), "images": (0.05, 0.15),
}


# --- mechanisms --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Linear:
    """Today's traces: TRACE_MODALITIES[label], each with TRACE_PROB (present) or SPURIOUS_PROB (absent)."""

    def describe(self, label: str) -> str:
        return f"linear: an independent trace in {' and '.join(TRACE_MODALITIES[label])} (p {TRACE_PROB})"


@dataclass(frozen=True)
class Interaction:
    """Label = (a1 & b1) | (a2 & b2), or with ``crossed`` (a1 & b2) | (a2 & b1): a_i cue keys of ``first``,
    b_i of ``second``."""
    first: str
    first_keys: tuple[str, str]
    second: str
    second_keys: tuple[str, str]
    crossed: bool = False

    def describe(self, label: str) -> str:
        (a1, a2), (b1, b2) = self.first_keys, self.second_keys
        if self.crossed:
            b1, b2 = b2, b1
        f, s = self.first, self.second
        return (f"interaction: ({f} cue {a1} and {s} cue {b1}) or ({f} cue {a2} and {s} cue {b2}); "
                f"cues independent, p {INTERACTION_CUE_PROB} each")


@dataclass(frozen=True)
class Needle:
    """One node in ``modality`` carries a cue group of the label's own key, among ``nodes`` nodes (a range)."""
    modality: str
    nodes: tuple[int, int] = NEEDLE_NODES

    def describe(self, label: str) -> str:
        return (f"needle: one {self.modality} node of {self.nodes[0]}-{self.nodes[1]} carries its cue "
                f"(p {NEEDLE_PROB}), decoy cue words elsewhere")


@dataclass(frozen=True)
class Follower:
    """No trace of its own: the label is ``rule`` ("all" or "any") of its parents' labels."""
    rule: str
    parents: tuple[str, ...]

    def describe(self, label: str) -> str:
        word = " and " if self.rule == "all" else " or "
        return f"co-occurrence: no trace; present exactly when {word.join(self.parents)}"


@dataclass(frozen=True)
class Null:
    """Drawn as always, no evidence: its cues are planted independently of it (at the linear marginal rate)."""

    def describe(self, label: str) -> str:
        return "null: independent of every feature (its cues are planted at random)"


Mechanism = Linear | Interaction | Needle | Follower | Null

_GROUPS = (  # (first modality, keys, second modality, keys, labels (plain, crossed))
    ("lyrics", ("Sad", "Lonely"), "audio", ("Sad", "Lonely"), ("Sad", "Lonely")),
    ("comments", ("Healing", "Fresh"), "images", ("Healing", "Fresh"), ("Healing", "Fresh")),
    ("lyrics", ("Romantic", "Miss"), "images", ("Romantic", "Moving"), ("Romantic", "Moving")),
    ("comments", ("Happy", "Excited"), "audio", ("Happy", "Excited"), ("Happy", "Excited")),
    ("lyrics", ("Nostalgic", "Healing"), "comments", ("Miss", "Sad"), ("Nostalgic", "Miss")),
    ("audio", ("Relaxed", "Quiet"), "images", ("Relaxed", "Quiet"), ("Relaxed", "Quiet")),
)


def _interaction_plan(groups) -> dict[str, Interaction]:
    plan = {}
    for first, first_keys, second, second_keys, (plain, crossed) in groups:
        plan[plain] = Interaction(first, first_keys, second, second_keys)
        plan[crossed] = Interaction(first, first_keys, second, second_keys, crossed=True)
    return plan


#: The co-occurrence probe's followers (their parents are linear labels).
FOLLOWERS: dict[str, Follower] = {
    "Nostalgic": Follower("all", ("Miss", "Sad")),
    "Lonely": Follower("all", ("Sad", "Quiet")),
    "Moving": Follower("any", ("Romantic", "Excited")),
    "Relaxed": Follower("any", ("Happy", "Fresh")),
}

#: The default sample's mechanism per label.
MIXTURE_PLAN: dict[str, Mechanism] = {
    "Sad": Linear(), "Healing": Linear(), "Happy": Linear(), "Lonely": Linear(),
    **_interaction_plan((("lyrics", ("Fresh", "Romantic"), "images", ("Relaxed", "Quiet"), ("Relaxed", "Quiet")),
                         ("comments", ("Moving", "Romantic"), "audio", ("Relaxed", "Quiet"),
                          ("Romantic", "Moving")))),
    "Nostalgic": Needle("comments", NEEDLE_NODES_MIXTURE),
    "Miss": Follower("all", ("Sad", "Nostalgic")), "Fresh": Follower("any", ("Happy", "Romantic")),
    "Excited": Null(),
}

PLANS: dict[str, dict[str, Mechanism]] = {
    "linear": {label: Linear() for label in LABEL_NAMES},
    "interaction": _interaction_plan(_GROUPS),
    "needle": {label: (Needle("comments" if k % 2 == 0 else "lyrics") if label in CUE_KEYS["lyrics"] else Linear())
               for k, label in enumerate(LABEL_NAMES)},
    "cooccurrence": {label: FOLLOWERS.get(label, Linear()) for label in LABEL_NAMES},
    "unreliable": {label: Linear() for label in LABEL_NAMES},
    "null": {label: Null() for label in LABEL_NAMES},
    "mixture": MIXTURE_PLAN,
}
FAULTY = {"unreliable", "mixture"}


def _check_plans() -> None:
    """Every plan gives each label one mechanism, and no cue key of a modality serves two labels' mechanisms."""
    for probe, plan in PLANS.items():
        assert set(plan) == set(LABEL_NAMES), probe
        owner: dict[tuple[str, str], set[str]] = {}
        for label, mech in plan.items():
            for mod, key in _keys_of(label, mech):
                assert key in CUE_KEYS[mod], (probe, label, mod, key)
                owner.setdefault((mod, key), set()).add(label)
            if isinstance(mech, Follower):
                assert all(not isinstance(plan[p], Follower) for p in mech.parents), (probe, label)
        for (mod, key), labels in owner.items():
            mechs = {plan[label] for label in labels}
            # the two labels of one interaction group share its keys; nothing else may share a key
            shared = all(isinstance(m, Interaction) for m in mechs) and len({(m.first, m.first_keys, m.second,
                                                                             m.second_keys) for m in mechs}) == 1
            assert len(labels) == 1 or shared, (probe, mod, key, labels)


def _keys_of(label: str, mech: Mechanism) -> list[tuple[str, str]]:
    """The (modality, cue key) pairs a label's mechanism plants."""
    if isinstance(mech, (Linear, Null)):
        return [(mod, label) for mod in TRACE_MODALITIES[label]]
    if isinstance(mech, Interaction):
        return [(mech.first, k) for k in mech.first_keys] + [(mech.second, k) for k in mech.second_keys]
    if isinstance(mech, Needle):
        return [(mech.modality, label)]
    return []


def plan_of(probe: str) -> dict[str, Mechanism]:
    if probe not in PLANS:
        raise ValueError(f"unknown probe {probe!r}; choose from {', '.join(PROBE_CHOICES)}")
    return PLANS[probe]


def mechanisms(probe: str) -> dict[str, str]:
    """label -> one sentence naming its mechanism under ``probe`` (the card prints it)."""
    return {label: mech.describe(label) for label, mech in plan_of(probe).items()}


def needle_node_range(probe: str, modality: str) -> tuple[int, int]:
    """How many nodes ``modality`` has in every song of ``probe`` where it carries a needle (inclusive range)."""
    ranges = {mech.nodes for mech in plan_of(probe).values() if isinstance(mech, Needle) and mech.modality == modality}
    if len(ranges) != 1:
        raise ValueError(f"probe {probe!r}: {modality} carries {'no' if not ranges else 'differently sized'} needles")
    return ranges.pop()


def needle_modalities(probe: str) -> dict[str, list[str]]:
    """modality -> the labels whose needle it carries (the modalities nemu.sample renders long)."""
    out: dict[str, list[str]] = {}
    for label, mech in plan_of(probe).items():
        if isinstance(mech, Needle):
            out.setdefault(mech.modality, []).append(label)
    return out


# --- labels and tags ----------------------------------------------------------------------------------------

_ENGLISH = dict(NEMU_LABELS)
# --- labels and tags ------------------------------------------------------------------------------------

def _affinity_matrix() -> np.ndarray:
    index = {name: i for i, name in enumerate(LABEL_NAMES)}
    m = np.ones((len(LABEL_NAMES), len(LABEL_NAMES)))
    for (a, b), v in LABEL_AFFINITY.items():
        m[index[a], index[b]] = m[index[b], index[a]] = v
    return m


_AFFINITY = _affinity_matrix()
_WEIGHTS = np.array([LABEL_WEIGHTS[name] for name in LABEL_NAMES])


def draw_labels(rng: np.random.Generator) -> list[str]:
    """A label set: none with NO_EMOTION_PROB, else 1-4 labels drawn sequentially with affinities."""
    if rng.random() < NO_EMOTION_PROB:
        return []
    counts = list(LABEL_COUNT_PROBS)
    k = counts[rng.choice(len(counts), p=np.array(list(LABEL_COUNT_PROBS.values())))]
    weights = _WEIGHTS.copy()
    chosen: list[int] = []
    for _ in range(k):
        p = weights.copy()
        p[chosen] = 0.0
        j = int(rng.choice(len(p), p=p / p.sum()))
        chosen.append(j)
        weights = weights * _AFFINITY[j]
    return [LABEL_NAMES[j] for j in sorted(chosen)]


def draw_tags(labels: list[str], rng: np.random.Generator) -> list[str]:
    tags = []
    for label in labels:
        if rng.random() < ENGLISH_TAG_PROB:
            tags.append(label if rng.random() < 0.7 else label.lower())  # the builder casefolds
        else:
            tags.append(_ENGLISH[label])
    names = list(OTHER_TAGS)
    p = np.array(list(OTHER_TAGS.values()))
    n_other = int(rng.integers(1, 4))
    tags += [names[i] for i in rng.choice(len(names), size=n_other, replace=False, p=p / p.sum())]
    return [tags[i] for i in rng.permutation(len(tags))]


def draw_traces(labels: list[str], rng: np.random.Generator) -> dict[str, list[str]]:
    """For each modality, the labels whose trace is planted in this song (true ones and rare spurious)."""
    out: dict[str, list[str]] = {m: [] for m in MODALITIES}
    for label in LABEL_NAMES:  # fixed order: same draws whatever the label set
        for mod in TRACE_MODALITIES[label]:
            u = rng.random()
            if u < (TRACE_PROB if label in labels else SPURIOUS_PROB):
                out[mod].append(label)
    return out




# --- one song's latent variables ---------------------------------------------------------------------------

def song_rng(seed: int, index: int) -> np.random.Generator:
    """Song ``index``'s own stream: song i is the same whatever the number of songs."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def draw_artist(rng: np.random.Generator) -> tuple[int, int, bool]:
    """Indices of the song's artist and duet partner among the sample's ARTISTS names, and whether it is a duet
    (the first draws of a song's stream, before its labels)."""
    a, b = rng.choice(ARTISTS, size=2, replace=False)
    return int(a), int(b), bool(rng.random() < 0.1)


def linear_trace_rate(label: str) -> float:
    """P(a linear trace of ``label`` in one of its modalities), over songs."""
    p = label_priors()[label]
    return TRACE_PROB * p + SPURIOUS_PROB * (1 - p)


def needle_rate(label: str) -> float:
    p = label_priors()[label]
    return NEEDLE_PROB * p + NEEDLE_SPURIOUS_PROB * (1 - p)


@lru_cache(maxsize=1)
def label_priors() -> dict[str, float]:
    """P(label) under :func:`draw_labels`, by Monte Carlo (20,000 draws of a fixed stream: about +-0.003)."""
    rng = np.random.default_rng(np.random.SeedSequence(2021))
    counts = dict.fromkeys(LABEL_NAMES, 0)
    n = 20000
    for _ in range(n):
        for label in draw_labels(rng):
            counts[label] += 1
    return {label: counts[label] / n for label in LABEL_NAMES}


def _interaction_keys(plan: dict[str, Mechanism]) -> list[tuple[str, str]]:
    keys: list[tuple[str, str]] = []
    for label, mech in plan.items():
        if isinstance(mech, Interaction):
            keys += [k for k in _keys_of(label, mech) if k not in keys]
    return keys


def _rule(mech: Interaction, present) -> float:
    """The interaction rule on cue values (0/1 or probabilities of independent cues)."""
    a1, a2 = (present(mech.first, k) for k in mech.first_keys)
    b1, b2 = (present(mech.second, k) for k in mech.second_keys)
    if mech.crossed:
        b1, b2 = b2, b1
    return 1.0 - (1.0 - a1 * b1) * (1.0 - a2 * b2)


def _draw_evidence(rng: np.random.Generator, plan: dict[str, Mechanism]):
    """A song's labels, the cue keys planted in each modality and its needles (non-linear probes)."""
    drawn = set(draw_labels(rng))
    cues: dict[str, list[str]] = {m: [] for m in MODALITIES}
    needles: dict[str, list[str]] = {m: [] for m in MODALITIES}
    for label in LABEL_NAMES:  # fixed order: the same draws whatever the label set
        mech = plan[label]
        if isinstance(mech, (Linear, Null)):
            for mod in TRACE_MODALITIES[label]:
                if isinstance(mech, Linear):
                    hit = rng.random() < (TRACE_PROB if label in drawn else SPURIOUS_PROB)
                else:  # independent of the label: the features vary as under linear but say nothing
                    hit = rng.random() < linear_trace_rate(label)
                if hit:
                    cues[mod].append(label)
        elif isinstance(mech, Needle):
            if rng.random() < (NEEDLE_PROB if label in drawn else NEEDLE_SPURIOUS_PROB):
                needles[mech.modality].append(label)
    for mod, key in _interaction_keys(plan):
        if rng.random() < INTERACTION_CUE_PROB:
            cues[mod].append(key)
    final = set()
    for label in LABEL_NAMES:
        mech = plan[label]
        if isinstance(mech, Interaction):
            if _rule(mech, lambda m, k: float(k in cues[m])) and rng.random() >= TAG_DROP_PROB:
                final.add(label)
        elif not isinstance(mech, Follower) and label in drawn:
            final.add(label)
    for label, mech in plan.items():  # parents are never followers (checked): their final values are known
        if isinstance(mech, Follower):
            if (all if mech.rule == "all" else any)(parent in final for parent in mech.parents):
                final.add(label)
    return [label for label in LABEL_NAMES if label in final], cues, needles


def _draw_fault(rng: np.random.Generator) -> tuple[str, str] | None:
    u, edge = rng.random(), 0.0
    for mod in MODALITIES:
        for kind, rate in zip(("missing", "replaced"), FAULT_RATES[mod]):
            edge += rate
            if u < edge:
                return mod, kind
    return None


def draw_song(rng: np.random.Generator, probe: str) -> tuple[dict, list[str]]:
    """One song's latent variables and its tags, from its own stream after :func:`draw_artist`.

    The latents: ``labels`` (the emotion labels its tags carry), ``cues`` (modality -> cue keys rendered in
    it), ``needles`` (modality -> keys of its needle nodes), ``own_cues``/``own_needles`` (the song's own, which
    differ from the rendered ones only in a replaced modality) and ``fault`` (``[modality, "missing" |
    "replaced"]`` or None). ``linear`` draws exactly as the sample did before probes (labels, tags, traces)."""
    empty = {m: [] for m in MODALITIES}
    if probe == LINEAR:
        labels = draw_labels(rng)
        tags = draw_tags(labels, rng)
        traces = draw_traces(labels, rng)
        return {"labels": labels, "cues": traces, "needles": empty, "own_cues": traces, "own_needles": empty,
                "fault": None}, tags
    plan = plan_of(probe)
    labels, own_cues, own_needles = _draw_evidence(rng, plan)
    cues, needles = dict(own_cues), dict(own_needles)
    fault = _draw_fault(rng) if probe in FAULTY else None
    if fault is not None:
        mod, kind = fault
        if kind == "replaced":  # another song's content: a song of the same generator, not in the sample
            _, other_cues, other_needles = _draw_evidence(rng, plan)
            cues[mod], needles[mod] = other_cues[mod], other_needles[mod]
        else:
            cues[mod], needles[mod] = [], []
    latent = {"labels": labels, "cues": cues, "needles": needles, "own_cues": own_cues, "own_needles": own_needles,
              "fault": list(fault) if fault else None}
    return latent, draw_tags(labels, rng)


def probe_latents(probe: str, songs: int, seed: int) -> dict:
    """The latent variables of every song of ``make_sample(songs=songs, seed=seed, probe=probe)``, regenerated
    from the songs' streams without rendering any media: ``{"probe", "seed", "songs": [latent, ...]}``, each
    latent as :func:`draw_song`'s plus its ``id``."""
    plan_of(probe)
    out = []
    for index in range(int(songs)):
        rng = song_rng(int(seed), index)
        draw_artist(rng)
        latent, _ = draw_song(rng, probe)
        out.append({"id": f"song-{index:05d}", **latent})
    return {"probe": probe, "seed": int(seed), "songs": out}


# --- the known answer -----------------------------------------------------------------------------------------

def _replaced_rate(probe: str, mod: str) -> float:
    """P(the modality shows another song's content | it is not missing)."""
    if probe not in FAULTY:
        return 0.0
    missing, replaced = FAULT_RATES[mod]
    return replaced / (1.0 - missing)


def _trace_posterior(prior: float, seen: list[tuple[bool, float]], hit: float, false_hit: float) -> float:
    """P(label | its trace bits in the modalities seen), each bit (observed, P(modality replaced)); a replaced
    modality shows a trace at the label's marginal rate whatever this song's label."""
    marginal = hit * prior + false_hit * (1 - prior)
    like1 = like0 = 1.0
    for observed, rho in seen:
        p1 = (1 - rho) * hit + rho * marginal
        p0 = (1 - rho) * false_hit + rho * marginal
        like1 *= p1 if observed else 1 - p1
        like0 *= p0 if observed else 1 - p0
    return prior * like1 / (prior * like1 + (1 - prior) * like0)


def posterior(latent: dict, probe: str, modalities=MODALITIES) -> np.ndarray:
    """P(each label's tag | what the generator planted in ``modalities`` of this song), in LABEL_NAMES order.

    A missing modality is known (it has no nodes); a replaced one is not, and is marginalised at its rate."""
    plan, priors = plan_of(probe), label_priors()
    missing = latent["fault"][0] if latent["fault"] and latent["fault"][1] == "missing" else None
    seen = [m for m in modalities if m != missing]
    post: dict[str, float] = {}
    for label in LABEL_NAMES:
        mech, prior = plan[label], priors[label]
        if isinstance(mech, Linear):
            bits = [(label in latent["cues"][m], _replaced_rate(probe, m)) for m in TRACE_MODALITIES[label]
                    if m in seen]
            post[label] = _trace_posterior(prior, bits, TRACE_PROB, SPURIOUS_PROB)
        elif isinstance(mech, Needle):
            bits = [(label in latent["needles"][mech.modality], _replaced_rate(probe, mech.modality))] \
                if mech.modality in seen else []
            post[label] = _trace_posterior(prior, bits, NEEDLE_PROB, NEEDLE_SPURIOUS_PROB)
        elif isinstance(mech, Interaction):
            def cue(mod: str, key: str) -> float:
                if mod not in seen:
                    return INTERACTION_CUE_PROB
                rho = _replaced_rate(probe, mod)
                return (1 - rho + rho * INTERACTION_CUE_PROB) if key in latent["cues"][mod] \
                    else rho * INTERACTION_CUE_PROB
            post[label] = _rule(mech, cue) * (1 - TAG_DROP_PROB)
        elif isinstance(mech, Null):
            post[label] = prior
    for label, mech in plan.items():
        if isinstance(mech, Follower):
            parents = np.array([post[p] for p in mech.parents])
            post[label] = float(np.prod(parents)) if mech.rule == "all" else float(1 - np.prod(1 - parents))
    return np.array([post[label] for label in LABEL_NAMES])


def _micro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score  # here: `nemu-sample --help` imports this module

    return float(f1_score(y_true, y_pred, average="micro", zero_division=0))


def score(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """The four numbers of a ceiling (mmer.metrics.evaluate's definitions: accuracy is the sample-averaged
    Jaccard index, empty union 0; F1 0 where undefined), rounded to 4 decimals."""
    from sklearn.metrics import f1_score, hamming_loss, jaccard_score

    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    values = {
        "micro_f1": f1_score(y_true, y_pred, average="micro", zero_division=0),
        "macro_f1": f1_score(y_true, y_pred, average="macro", zero_division=0),
        "accuracy": jaccard_score(y_true, y_pred, average="samples", zero_division=0),
        "hamming_loss": hamming_loss(y_true, y_pred),
    }
    return {key: round(float(values[key]), 4) for key in CEILING_KEYS}


def _kept(latents: dict) -> list[dict]:
    """The songs a build keeps: those with at least one emotion tag."""
    return [song for song in latents["songs"] if song["labels"]]


def label_matrix(songs: list[dict]) -> np.ndarray:
    return np.array([[label in song["labels"] for label in LABEL_NAMES] for song in songs], dtype=int) \
        .reshape(len(songs), len(LABEL_NAMES))


def ceiling_decision(latents: dict, modalities=MODALITIES) -> tuple[np.ndarray, np.ndarray, float]:
    """(true labels, the generator's decision, its threshold) over the kept songs: the posterior from the
    latents of ``modalities`` at the grid threshold with the best micro-F1 (ties: nearest 0.5, then lower)."""
    songs = _kept(latents)
    y = label_matrix(songs)
    probs = np.array([posterior(song, latents["probe"], modalities) for song in songs]).reshape(y.shape)
    scored = [(_micro_f1(y, (probs >= t).astype(int)), t) for t in THRESHOLD_GRID]
    best = max(s for s, _ in scored)
    threshold = min((t for s, t in scored if s == best), key=lambda t: (abs(t - 0.5), t))
    return y, (probs >= threshold).astype(int), threshold


def ceiling_of(latents: dict, modalities=MODALITIES) -> dict[str, float]:
    """The generator's best decision from its latent variables (see the module docstring), scored over the kept
    songs; with ``modalities``, the best any model seeing only those modalities could do."""
    y, decision, _ = ceiling_decision(latents, modalities)
    return score(y, decision)


def constant_label_set(latents: dict) -> list[str]:
    """The best constant label set by micro-F1 over the kept songs: the k most frequent labels, best k (for a
    fixed size the most frequent labels have the most true positives, so no other constant set does better)."""
    y = label_matrix(_kept(latents))
    order = np.argsort(-y.sum(axis=0), kind="stable")
    best, best_k = -1.0, 1
    for k in range(1, y.shape[1] + 1):
        guess = np.zeros_like(y)
        guess[:, order[:k]] = 1
        micro = _micro_f1(y, guess)
        if micro > best:
            best, best_k = micro, k
    return [LABEL_NAMES[j] for j in sorted(order[:best_k])]


def constant_baseline(latents: dict) -> dict[str, float]:
    """The four numbers of :func:`constant_label_set` over the kept songs."""
    y = label_matrix(_kept(latents))
    chosen = set(constant_label_set(latents))
    guess = np.tile([label in chosen for label in LABEL_NAMES], (len(y), 1)).astype(int)
    return score(y, guess)


_check_plans()
