"""Calibration data for int8: where the samples come from, how images become tensors, and which samples calibrate
and which are held out to judge accuracy (never both).

Sources (`--calibration`): an `.npz` (arrays by input name, first axis = samples), a folder of `.npy`/`.npz`, or a
folder of images (searched recursively). Images are turned into an N×C×H×W float tensor exactly as stated — no
silent ImageNet defaults:

    resize   crop:   the shorter side to floor(size / crop_pct), then the centre size×size (timm's eval transform,
                     torchvision's Resize(int) + CenterCrop rounding)
             squash: straight to H×W, aspect ratio not kept
             (no --image-size: the images are used as they are, all at the model's H×W)
    pixels   x = (p / 255 − mean) / std, per channel, in the stated channel order (rgb or bgr)

or from a timm-style data config JSON (`input_size`, `interpolation`, `mean`, `std`, `crop_pct`, `crop_mode`:
what `timm.data.resolve_data_config` returns), options given on the command line overriding its entries.

The samples are shuffled once (seeded) and split: the first `held_out` judge accuracy, the next `samples`
calibrate. Without `--calibration`, random normal samples calibrate — and the report says loudly that accuracy on
real inputs is unknown.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from sparsecut.errors import InputError
from sparsecut.feeds import InputSpec, input_specs, read_arrays, synthetic_inputs

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "IMAGE_SUFFIXES",
    "METHODS",
    "Calibration",
    "CalibrationSet",
    "ImagePreprocessing",
    "calibration_set",
    "load_image",
    "preprocessing_from_config",
]

Feed = dict[str, np.ndarray]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
METHODS = ("minmax", "entropy", "percentile")  # onnxruntime.quantization's calibrators
RESIZE_MODES = ("crop", "squash")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
MAX_DEFAULT_SAMPLES = 256  # calibration samples taken from a big source when --calibration-samples is not given
MAX_DEFAULT_HELD_OUT = 100  # held-out samples likewise (a fifth of the source, at least 1)


@dataclasses.dataclass(frozen=True)
class ImagePreprocessing:
    """How an image file becomes the model's input tensor (see the module docstring)."""

    size: tuple[int, int] | None = None  # H, W; None: the images are used as they are
    resize: str = "crop"
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, ...] | None = None  # in units of pixel / 255, one per channel
    std: tuple[float, ...] | None = None
    channel_order: str = "rgb"

    def describe(self) -> str:
        size = "as they are" if self.size is None else f"{self.size[0]}×{self.size[1]}"
        how = "" if self.size is None else (
            f", {self.resize}" + (f" (crop_pct {self.crop_pct:g})" if self.resize == "crop" else "")
            + f", {self.interpolation}"
        )  # fmt: skip
        numbers = lambda values: ",".join(f"{v:g}" for v in values or ())  # noqa: E731
        return (
            f"images {size}{how}, {self.channel_order.upper()}, (p/255 − [{numbers(self.mean)}]) / "
            f"[{numbers(self.std)}]"
        )


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What int8 calibrates on and how (the options of `--precision int8`)."""

    source: Path | None = None  # .npz, folder of .npy/.npz, or folder of images; None: random normal (loud)
    images: ImagePreprocessing = dataclasses.field(default_factory=ImagePreprocessing)
    method: str = "minmax"
    samples: int | None = None  # calibration samples; None: the source's, at most MAX_DEFAULT_SAMPLES
    held_out: int | None = None  # samples that only judge accuracy; None: a fifth, at most MAX_DEFAULT_HELD_OUT
    random_samples: int = 16  # without a source


@dataclasses.dataclass(frozen=True)
class CalibrationSet:
    calibrate: list[Feed]
    held_out: list[Feed]
    origin: str  # what the report says the samples were
    random: bool


def calibration_set(calibration: Calibration, model: onnx.ModelProto, source: Path, seed: int = 0) -> CalibrationSet:
    """The calibration and held-out samples (batch 1 each) for `model`, checked against its inputs."""
    if calibration.method not in METHODS:
        raise InputError(f"--calibration-method: unknown {calibration.method!r}; known: {', '.join(METHODS)}")
    specs = input_specs(model)
    if calibration.source is None:
        count = calibration.samples or calibration.random_samples
        held = calibration.held_out or max(4, count // 4)
        samples = [synthetic_inputs(specs, 1, seed + i, source) for i in range(count + held)]
        return CalibrationSet(samples[held:], samples[:held], f"random normal ({count} samples, {held} held out)", True)
    path = Path(calibration.source)
    if not path.exists():
        raise InputError(f"{path}: no such calibration file or folder")
    images = _image_files(path) if path.is_dir() else []
    if images:
        order = np.random.default_rng(seed).permutation(len(images))
        held, count = _split(calibration, len(images), path)
        chosen = [images[i] for i in order[: held + count]]
        spec = _image_input(specs, path)
        tensors = _images_to_tensors(chosen, calibration.images, spec)
        samples = [{spec.name: t} for t in tensors]
        how = calibration.images.describe()
        return CalibrationSet(samples[held:], samples[:held], f"{path} ({count} images, {held} held out; {how})", False)
    arrays = _array_samples(path, specs)
    order = np.random.default_rng(seed).permutation(len(arrays))
    held, count = _split(calibration, len(arrays), path)
    samples = [arrays[i] for i in order[: held + count]]
    return CalibrationSet(samples[held:], samples[:held], f"{path} ({count} samples, {held} held out)", False)


def _split(calibration: Calibration, available: int, path: Path) -> tuple[int, int]:
    """(held out, calibrating) sample counts; refused when the source has fewer than asked."""
    if available < 2:
        raise InputError(
            f"{path}: holds {available} sample(s); int8 needs at least 2 (one to calibrate, one held out to judge "
            "accuracy)"
        )
    held = (
        calibration.held_out if calibration.held_out is not None else max(1, min(available // 5, MAX_DEFAULT_HELD_OUT))
    )
    if held >= available:
        raise InputError(f"--held-out: {held} asked, but {path} holds {available} sample(s); leave some to calibrate")
    count = calibration.samples if calibration.samples is not None else min(available - held, MAX_DEFAULT_SAMPLES)
    if held + count > available:
        raise InputError(
            f"--calibration-samples: {count} asked, but {path} holds {available} sample(s) and {held} are held out "
            "to judge accuracy"
        )
    return held, count


def _array_samples(path: Path, specs: Sequence[InputSpec]) -> list[Feed]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
        if not files:
            raise InputError(f"{path}: calibration folder holds no .npy, .npz or image files")
    else:
        files = [path]
    samples: list[Feed] = []
    for file in files:
        batch = read_arrays(file, specs, "--calibration")
        count = len(next(iter(batch.values())))
        samples += [{name: array[i : i + 1] for name, array in batch.items()} for i in range(count)]
    return samples


def _image_files(folder: Path) -> list[Path]:
    """The folder's images, recursively; any other file there is refused (a folder of images is all images)."""
    if any(p.suffix in (".npy", ".npz") for p in folder.iterdir()):
        return []  # a folder of arrays
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    for file in files:
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(
                f"{file}: not an image ({', '.join(IMAGE_SUFFIXES)}); a calibration folder holds images, or .npy/.npz"
            )
    return files


def _image_input(specs: Sequence[InputSpec], path: Path) -> InputSpec:
    """The one input images feed: float N×C×H×W with 1 or 3 channels."""
    if len(specs) != 1:
        raise InputError(
            f"{path}: images feed one input; the model has {len(specs)} — pass arrays by input name (.npz)"
        )
    spec = specs[0]
    if spec.dtype not in ("float32", "float16") or len(spec.shape) != 4 or spec.shape[1] not in (1, 3):
        raise InputError(
            f"{path}: images feed a float N×C×H×W input with 1 or 3 channels; the model's is {spec.describe()} — "
            "pass arrays (.npz)"
        )
    return spec


def _images_to_tensors(files: Sequence[Path], how: ImagePreprocessing, spec: InputSpec) -> list[np.ndarray]:
    channels = int(spec.shape[1])
    if how.mean is None or how.std is None:
        raise InputError(
            "--calibration: images need their normalization stated: pass --mean and --std (in units of pixel/255, "
            "e.g. ImageNet's 0.485,0.456,0.406 and 0.229,0.224,0.225; 0 and 1 for a net that takes p/255) or "
            "--data-config"
        )
    for option, values in (("--mean", how.mean), ("--std", how.std)):
        if len(values) != channels:
            raise InputError(f"{option}: {len(values)} value(s) for a model input of {channels} channel(s)")
    if any(s <= 0 or not math.isfinite(s) for s in how.std):
        raise InputError("--std: every value must be a positive number")
    model_size = tuple(spec.shape[2:]) if all(isinstance(d, int) for d in spec.shape[2:]) else None
    if how.size is not None and model_size is not None and how.size != model_size:
        raise InputError(
            f"--image-size: {how.size[0]}×{how.size[1]}, but the model takes {model_size[0]}×{model_size[1]}"
        )
    tensors = [load_image(file, how, channels) for file in files]
    first = tensors[0].shape[2:]
    for file, tensor in zip(files, tensors, strict=True):
        if model_size is not None and tensor.shape[2:] != model_size:
            h, w = tensor.shape[2:]
            raise InputError(
                f"{file}: {h}×{w} pixels, the model takes {model_size[0]}×{model_size[1]}: pass --image-size (and "
                "--resize) to resize"
            )
        if tensor.shape[2:] != first:
            raise InputError(
                f"{file}: {tensor.shape[2]}×{tensor.shape[3]} pixels, {files[0].name} is {first[0]}×{first[1]}: "
                "pass --image-size to resize them to one size"
            )
    return [t.astype(spec.dtype) for t in tensors]


def load_image(file: Path, how: ImagePreprocessing, channels: int) -> np.ndarray:
    """One image as a 1×C×H×W float32 tensor, preprocessed as `how` states."""
    from PIL import Image

    image: Image.Image
    try:
        with Image.open(file) as opened:
            opened.load()
            image = opened
    except Exception as exc:  # PIL's UnidentifiedImageError, OSError on truncated files, decompression bombs
        raise InputError(f"{file}: not an image PIL can read ({type(exc).__name__})") from exc
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    without_alpha = {"RGBA": "RGB", "LA": "L", "1": "L"}.get(image.mode)
    if without_alpha is not None:
        image = image.convert(without_alpha)
    bands = {"L": 1, "RGB": 3}.get(image.mode)
    if bands is None:
        raise InputError(f"{file}: image mode {image.mode} is not 8-bit grey or RGB; convert it first")
    if bands != channels:
        raise InputError(f"{file}: {bands} channel(s) (mode {image.mode}), the model takes {channels}")
    if how.size is not None:
        image = _resized(image, how)
    pixels = np.asarray(image, dtype=np.float32).reshape(image.height, image.width, bands)
    if how.channel_order == "bgr":
        pixels = pixels[:, :, ::-1]
    assert how.mean is not None and how.std is not None
    mean = np.asarray(how.mean, np.float32)
    std = np.asarray(how.std, np.float32)
    tensor = (pixels / np.float32(255) - mean) / std
    return np.ascontiguousarray(tensor.transpose(2, 0, 1)[None])


def _resized(image: Image.Image, how: ImagePreprocessing) -> Image.Image:
    from PIL import Image

    assert how.size is not None
    filter_ = {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
    }[how.interpolation]
    height, width = how.size
    if how.resize == "squash":
        return image.resize((width, height), filter_)
    # crop: torchvision's Resize(int) (shorter side to the scale size, the longer one truncated) + CenterCrop
    scale = math.floor(min(height, width) / how.crop_pct)
    w, h = image.size
    new = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    image = image.resize(new, filter_)
    top = round((new[1] - height) / 2.0)
    left = round((new[0] - width) / 2.0)
    if top < 0 or left < 0:
        raise InputError(f"--crop-pct: {how.crop_pct:g} leaves {new[0]}×{new[1]}, smaller than {width}×{height}")
    return image.crop((left, top, left + width, top + height))


def preprocessing_from_config(path: Path) -> ImagePreprocessing:
    """A timm-style data config JSON (`timm.data.resolve_data_config`'s keys) as image preprocessing."""
    try:
        config = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such data config file (--data-config)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a JSON data config ({type(exc).__name__}; --data-config)") from exc
    if not isinstance(config, dict):
        raise InputError(f"{path}: a data config is a JSON object (input_size, mean, std, …; --data-config)")

    def numbers(key: str, count: int | None = None) -> tuple[float, ...] | None:
        value = config.get(key)
        if value is None:
            return None
        if (
            not isinstance(value, list)
            or not all(isinstance(v, (int, float)) for v in value)
            or (count is not None and len(value) != count)
        ):
            raise InputError(f"{path}: {key!r} must be a list of {count or 'some'} numbers (--data-config)")
        return tuple(float(v) for v in value)

    size = numbers("input_size", 3)
    mode = config.get("crop_mode", "center")
    if mode not in ("center", "squash"):
        raise InputError(f"{path}: crop_mode {mode!r}: sparsecut reads 'center' and 'squash' (--data-config)")
    interpolation = config.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise InputError(f"{path}: interpolation {interpolation!r}; known: {', '.join(INTERPOLATIONS)} (--data-config)")
    crop_pct = config.get("crop_pct", 0.875)
    if not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
        raise InputError(f"{path}: crop_pct must be a number in (0, 1] (--data-config)")
    return ImagePreprocessing(
        size=(int(size[1]), int(size[2])) if size else None,
        resize="squash" if mode == "squash" else "crop",
        crop_pct=float(crop_pct),
        interpolation=interpolation,
        mean=numbers("mean"),
        std=numbers("std"),
    )
