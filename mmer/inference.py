"""Emotions of new songs from their raw files, with any run folder (HHMPN, a neural baseline or an estimator).

From Python (load a run once, predict many)::

    from mmer.inference import Predictor
    predictor = Predictor.load("runs/hhmpn")                  # the run folder of hhmpn.train or a run_all cell
    result = predictor.predict_raw("RAW")                     # a raw folder; records may carry no tags
    result = predictor.predict_records([{"id": "x", "lyrics": "...", "audio": "x.wav", "images": []}], raw_dir=".")
    result = predictor.predict_files(lyrics="x.lrc", audio="x.mp3", images=["cover.jpg"], comments="x.txt")
    result.records          # [{"id", "probabilities": {label: p}, "predicted": [labels]}], in the input's order
    result.frame()          # the same as a pandas DataFrame: id, predicted, one probability column per label
    result.quarantined      # records that could not be used: {"id", "line", "field", "reason"}
    predictor.predict_raw("RAW", perturbations=[parse("drop:audio")])   # inputs broken on purpose (mmer.perturb)

The command line is ``python -m hhmpn.predict --run RUN --raw RAW`` or ``... --lyrics FILE --audio FILE
--image FILE [--comments FILE]`` (see ``hhmpn.predict``).

What a prediction is made from: the run's dataset (found relative to the run folder, then at
``run.json``'s ``data``, ``mmer.runs.find_dataset``; or ``data=`` when it has moved elsewhere) must be the
very build the run was trained on (``mmer.runs.check_build``: its manifest's fingerprint is the run's
``dataset_fingerprint``), with the run's labels and modality dims; the songs are featurised with that
dataset's settings by :class:`nemu.featurize.Featurizer` (the build's own extraction code, the dataset's word
vectors and image weights, each matched by sha256); the run's saved input-normalisation statistics are
applied (and must give finite features); then the model. A song with no node in any of the run's modalities
(possible for a run on some modalities) is quarantined with that reason, as the build does, not given the
model's constant output. Perturbations (``mmer.perturb``: a modality dropped or shuffled among the songs
given, noise) apply after that rule and after normalisation, as ``mmer.predict`` applies them. Anything that
would make the features differ is refused with one line naming
what differs and how to fix it (``FeatureMismatch`` or ``RunFolderError``, both ValueErrors).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from mmer.perturb import Perturbation, PerturbedDataset, check as check_perturbations, parse  # noqa: F401
from mmer.predict import LoadedRun, check_finite_features, load_run
from mmer.runs import RunFolderError, read_build
from nemu.featurize import Featurized, Featurizer, FeatureMismatch  # noqa: F401  (FeatureMismatch: documented)
from nemu.records import Quarantined


class NewSongs:
    """A torch-style Dataset of featurised songs, normalised with a run's statistics (what predict feeds)."""

    def __init__(self, featurized: Featurized, statistics, modalities: list[str], num_labels: int):
        self.root = "the new songs"
        self.ids = featurized.ids
        self.normalization = statistics
        self.modality_dims = {m: statistics.modality_dims[m] for m in modalities}
        self._nodes = [{m: statistics.apply(m, song.nodes[m]) for m in modalities} for song in featurized.songs]
        self._labels = np.zeros(num_labels, dtype=np.float32)  # unknown; the models do not read them to predict

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        import torch

        return {"id": self.ids[index], "features": {m: torch.from_numpy(v) for m, v in self._nodes[index].items()},
                "labels": torch.from_numpy(self._labels)}


@dataclass
class Predictions:
    """Predictions of new songs: ``records`` in predict's format (the input's order), the probabilities as an
    (N, L) array, and the records that could not be used (``quarantined``, the build's reasons)."""

    records: list[dict]
    ids: list[str]
    probabilities: np.ndarray
    label_names: list[str]
    threshold: float
    quarantined: list[dict] = field(default_factory=list)
    text_nodes_without_word_vectors: int = 0

    def frame(self):
        """A pandas DataFrame: ``id``, ``predicted`` (list of labels), one probability column per label."""
        import pandas as pd

        frame = pd.DataFrame(self.probabilities, columns=self.label_names)
        frame.insert(0, "predicted", [record["predicted"] for record in self.records])
        frame.insert(0, "id", self.ids)
        return frame


@dataclass
class Predictor:
    """A run folder loaded once, with the featuriser of the dataset it was trained on."""

    run: LoadedRun
    featurizer: Featurizer
    batch_size: int = 64

    @classmethod
    def load(cls, run_dir: str | Path, *, data: str | Path | None = None, word_vectors: str | Path | None = None,
             image_weights: str | Path | None = None, device: str | None = None, workers: int = 1,
             batch_size: int = 64, progress: bool = False) -> "Predictor":
        """Load ``run_dir`` and the featuriser of its dataset (``data`` where it has moved; see the module)."""
        run = load_run(run_dir, device)
        if run.run.get("extra_columns"):
            raise RunFolderError(f"{run.run_dir}: model {run.run['model']} reads the per-sample column(s) "
                                 f"{', '.join(run.run['extra_columns'])}, which raw records do not have")
        # the one build check of --data and --raw (mmer.runs.check_build): labels, dims, fingerprint
        data = run.find_dataset() if data is None else Path(data)
        read_build(data, run.run, run.run_dir)
        featurizer = Featurizer(data, word_vectors=word_vectors, image_weights=image_weights, workers=workers,
                                progress=progress)
        return cls(run, featurizer, batch_size)

    @property
    def label_names(self) -> list[str]:
        return self.run.label_names

    def predict_raw(self, raw_dir: str | Path, perturbations: Sequence[Perturbation] = (),
                    seed: int = 0) -> Predictions:
        """Every record of the raw folder ``raw_dir`` (records.jsonl in the raw format), in its order."""
        check_perturbations(perturbations, list(self.run.modality_dims))  # before the costly featurising
        return self.predict_featurized(self.featurizer.featurize_folder(raw_dir), perturbations, seed)

    def predict_records(self, records, raw_dir: str | Path = ".", perturbations: Sequence[Perturbation] = (),
                        seed: int = 0) -> Predictions:
        """Raw-format dicts, media paths relative to ``raw_dir``."""
        check_perturbations(perturbations, list(self.run.modality_dims))
        return self.predict_featurized(self.featurizer.featurize_records(records, raw_dir), perturbations, seed)

    def predict_files(self, *, lyrics=None, audio=None, images=(), comments=None, song_id=None,
                      perturbations: Sequence[Perturbation] = (), seed: int = 0) -> Predictions:
        """One song from its files (:meth:`nemu.featurize.Featurizer.featurize_files`); a shuffle needs two
        songs, so it is refused here."""
        check_perturbations(perturbations, list(self.run.modality_dims), songs=1)
        return self.predict_featurized(self.featurizer.featurize_files(
            lyrics=lyrics, audio=audio, images=images, comments=comments, song_id=song_id), perturbations, seed)

    def predict_featurized(self, featurized: Featurized, perturbations: Sequence[Perturbation] = (),
                           seed: int = 0) -> Predictions:
        """Normalise with the run's statistics, predict, and format as ``hhmpn.predict`` does; ``perturbations``
        (``mmer.perturb``, drawn from ``seed``) break the inputs of the songs kept."""
        modalities = list(self.run.modality_dims)
        check_perturbations(perturbations, modalities)
        empty = [song for song in featurized.songs if all(len(song.nodes[m]) == 0 for m in modalities)]
        if empty:  # the build's rule, for the run's modalities: no node in any modality is quarantined
            gone = {id(song) for song in empty}
            featurized = Featurized([song for song in featurized.songs if id(song) not in gone],
                                    list(featurized.quarantined), featurized.input_count,
                                    featurized.text_nodes_without_word_vectors)
            featurized.quarantined.extend(Quarantined(song.id, song.line, "record", "no node in any of the run's "
                                                      f"modalities ({', '.join(f'0 {m}' for m in modalities)})")
                                          for song in empty)
            featurized.quarantined.sort(key=lambda q: q.line)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused just below, naming the file
            songs = NewSongs(featurized, self.run.statistics, modalities, len(self.label_names))
        check_finite_features({m: np.concatenate([n[m] for n in songs._nodes]) for m in modalities} if len(songs)
                              else {}, "the new songs", self.run.run_dir)
        if len(songs) and perturbations:
            check_perturbations(perturbations, modalities, songs=len(songs))
            songs = PerturbedDataset(songs, perturbations, seed)
        if len(songs):
            ids, probabilities = self.run.predict_dataset(songs, self.batch_size)
            decisions = self.run.decide(songs, probabilities)
        else:
            ids, probabilities = [], np.zeros((0, len(self.label_names)), dtype=np.float32)
            decisions = np.zeros((0, len(self.label_names)), dtype=np.int8)
        # the true set, for songs whose records carry emotion tags (as predict gives it for a labelled dataset)
        labelled = [song for song in featurized.songs if song.record.labels]
        truth = SimpleNamespace(ids=[song.id for song in labelled], labels=[
            [int(name in song.record.labels) for name in self.label_names] for song in labelled])
        records = self.run.records(ids, probabilities, truth if labelled else None, decisions)
        return Predictions(records, list(ids), np.asarray(probabilities), self.label_names, self.run.threshold,
                           [q.to_json() for q in featurized.quarantined], featurized.text_nodes_without_word_vectors)
