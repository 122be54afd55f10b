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
    max_seconds: float = 600.0  # decoding stops here: a header claiming hours (or 1 Hz) cannot cost gigabytes

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AudioNodes:
    """One file's audio nodes, its decoded duration and what the limits cut."""

    features: np.ndarray  # (nodes, n_mfcc) float32
    duration_seconds: float  # decoded, so at most max_seconds
    seconds_cut: float  # beyond max_seconds (from the file's header; 0 when it does not say)
    truncated: bool  # decoding stopped at max_seconds
    windows_cut: int  # windows beyond max_nodes (dropped evenly)


class AudioDecodeError(ValueError):
    pass


DECODE_BLOCK_SAMPLES = 1 << 20  # samples (frames × channels) read at a time: 4 MB of float32


def _decode_streaming(path: Path, sample_rate: int, max_seconds: float | None) -> tuple[np.ndarray, float | None]:
    """(mono samples at ``sample_rate``, seconds the header claims) decoded block by block with soundfile.

    Each block is mixed to mono and resampled (soxr's stream, the HQ quality librosa uses) before the
    next is read, so memory holds the mono output and one block: neither a file of 255 channels that
    compresses to nothing nor a header claiming any length or rate can make decoding cost more.
    """
    import soundfile
    import soxr

    with soundfile.SoundFile(str(path)) as handle:
        native, channels = handle.samplerate, handle.channels
        if native <= 0 or channels <= 0:
            raise AudioDecodeError(f"header gives {native} Hz and {channels} channels")
        claimed = handle.frames / native if handle.frames > 0 else None
        remaining = int(max_seconds * native) if max_seconds is not None else max(handle.frames, 0)
        block = max(1, DECODE_BLOCK_SAMPLES // channels)
        stream = soxr.ResampleStream(native, sample_rate, 1, dtype="float32") if native != sample_rate else None
        pieces = []
        while remaining > 0:
            data = handle.read(min(block, remaining), dtype="float32", always_2d=True)
            if len(data) == 0:
                break
            remaining -= len(data)
            mono = np.ascontiguousarray(data.mean(axis=1, dtype=np.float32))
            pieces.append(stream.resample_chunk(mono) if stream is not None else mono)
        if stream is not None:
            pieces.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    return (np.concatenate(pieces) if pieces else np.zeros(0, np.float32)), claimed


def _header_seconds(path: Path) -> float | None:
    """The duration a file's header claims, where soundfile can read it (None otherwise); nothing is decoded."""
    import soundfile

    try:
        info = soundfile.info(str(path))
        return info.frames / info.samplerate if info.samplerate > 0 and info.frames >= 0 else None
    except Exception:  # a damaged header: the count is simply unknown
        return None


def load_audio(path: Path, sample_rate: int, max_seconds: float | None = None) -> np.ndarray:
    """Mono float32 samples at ``sample_rate``, at most ``max_seconds`` of them decoded.

    Raises AudioDecodeError for unreadable, empty or non-finite audio. Decoding is libsndfile's
    (wav, flac, ogg, mp3), block by block (``_decode_streaming``), and stops after ``max_seconds``
    of the file's own samples, so the cost is bounded whatever the header claims. librosa's
    audioread fallback is not used: it would hand hostile files to whatever decoder the machine has
    (ffmpeg follows playlists) and make features depend on it.
    """
    try:
        samples, _ = _decode_streaming(path, sample_rate, max_seconds)
    except AudioDecodeError:
        raise
    except Exception as exc:  # soundfile/soxr/audioread raise many types for corrupt files
        raise AudioDecodeError(f"cannot decode audio: {type(exc).__name__}: {exc}") from None
    if samples.size == 0:
        raise AudioDecodeError("audio file holds no samples")
    if not np.all(np.isfinite(samples)):
        raise AudioDecodeError("audio holds NaN or infinite samples")
    if max_seconds is not None and samples.size > int(np.ceil(max_seconds * sample_rate)) + 1:
        samples = samples[: int(np.ceil(max_seconds * sample_rate))]  # the resampler may round up by a sample
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


def audio_nodes(path: Path, settings: AudioSettings) -> AudioNodes:
    """One audio file's nodes (windows × n_mfcc), decoded duration and what ``max_seconds``/``max_nodes`` cut.

    Raises AudioDecodeError when the file cannot be decoded or its features are not all finite
    (sample values so large that the power spectrum overflows float32).
    """
    samples = load_audio(path, settings.sample_rate, settings.max_seconds)
    duration = len(samples) / settings.sample_rate
    truncated = len(samples) >= int(settings.max_seconds * settings.sample_rate)
    claimed = _header_seconds(path) if truncated else None
    seconds_cut = max(0.0, claimed - duration) if claimed is not None else 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught below, as non-finite features
        frames = mfcc_frames(samples, settings)
    del samples
    windows = pool_windows(frames, settings)
    n_windows = -(-len(frames) // max(1, round(settings.window_seconds * settings.sample_rate / settings.hop_length)))
    bad = int((~np.isfinite(windows)).sum())
    if bad:
        raise AudioDecodeError(f"{bad} of {windows.size} audio feature values are NaN or infinite "
                               f"(sample values too large for the MFCC's float32 power spectrum)")
    return AudioNodes(windows, duration, seconds_cut, truncated, max(0, n_windows - len(windows)))

