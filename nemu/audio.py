"""Audio nodes: librosa MFCC frames (74 coefficients, the paper's ε^A) pooled into fixed windows."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class AudioSettings:
    sample_rate: int = 22050
    n_mfcc: int = 74
    hop_length: int = 512
    window_seconds: float = 1.0  # one node per window of MFCC frames (mean-pooled)
    max_nodes: int = 300  # longer songs keep evenly spaced windows, so the whole song is covered

    def to_dict(self) -> dict:
        return asdict(self)


class AudioDecodeError(ValueError):
    pass


def load_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 samples at ``sample_rate``; raises AudioDecodeError for unreadable or empty files."""
    import warnings

    import librosa

    try:
        with warnings.catch_warnings():  # librosa warns before its audioread fallback; failure is reported below
            warnings.simplefilter("ignore", (UserWarning, FutureWarning))
            samples, _ = librosa.load(str(path), sr=sample_rate, mono=True)
    except Exception as exc:  # soundfile/audioread raise many types for corrupt files
        raise AudioDecodeError(f"cannot decode audio: {type(exc).__name__}: {exc}") from None
    if samples.size == 0:
        raise AudioDecodeError("audio file holds no samples")
    if not np.all(np.isfinite(samples)):
        raise AudioDecodeError("audio holds NaN or infinite samples")
    return samples


def mfcc_frames(samples: np.ndarray, settings: AudioSettings) -> np.ndarray:
    """(frames, n_mfcc) MFCC matrix."""
    import librosa

    mfcc = librosa.feature.mfcc(
        y=samples, sr=settings.sample_rate, n_mfcc=settings.n_mfcc, hop_length=settings.hop_length)
    return mfcc.T.astype(np.float32)


def pool_windows(frames: np.ndarray, settings: AudioSettings) -> np.ndarray:
    """Mean-pool frames into windows of ``window_seconds``; cap at ``max_nodes`` evenly spaced windows."""
    per_window = max(1, round(settings.window_seconds * settings.sample_rate / settings.hop_length))
    n_windows = -(-len(frames) // per_window)
    windows = np.stack([frames[i * per_window:(i + 1) * per_window].mean(axis=0) for i in range(n_windows)])
    if n_windows > settings.max_nodes:
        keep = np.linspace(0, n_windows - 1, settings.max_nodes).round().astype(int)
        windows = windows[keep]
    return windows.astype(np.float32)


def extract_audio(path: Path, settings: AudioSettings) -> tuple[np.ndarray, float]:
    """(nodes × n_mfcc features, duration in seconds) of one audio file."""
    samples = load_audio(path, settings.sample_rate)
    return pool_windows(mfcc_frames(samples, settings), settings), len(samples) / settings.sample_rate
