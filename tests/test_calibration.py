"""Calibration data: images preprocessed exactly as stated, timm data configs, the calibration / held-out split."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from PIL import Image

from sparsecut.calibration import (
    Calibration,
    ImagePreprocessing,
    calibration_set,
    load_image,
    preprocessing_from_config,
)
from sparsecut.errors import InputError


def _model(channels: int = 3, size: int | str = 4) -> onnx.ModelProto:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", channels, size, size])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return onnx.helper.make_model(graph)


def _pixels(height: int, width: int) -> np.ndarray:
    """A known RGB image: every pixel and channel a different value."""
    return (np.arange(height * width * 3).reshape(height, width, 3) * 7 % 256).astype(np.uint8)


def test_an_image_becomes_the_stated_tensor(tmp_path):
    pixels = _pixels(4, 4)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    got = load_image(tmp_path / "a.png", ImagePreprocessing(mean=mean, std=std), 3)
    expected = ((pixels / 255 - np.array(mean)) / np.array(std)).transpose(2, 0, 1)[None]
    assert got.shape == (1, 3, 4, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    bgr = load_image(tmp_path / "a.png", ImagePreprocessing(mean=mean, std=std, channel_order="bgr"), 3)
    expected_bgr = ((pixels[:, :, ::-1] / 255 - np.array(mean)) / np.array(std)).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(bgr, expected_bgr, rtol=1e-6)


def test_crop_takes_the_centre_as_torchvision_does(tmp_path):
    pixels = _pixels(4, 8)
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    # crop_pct 1: the shorter side (4) already is the size; the centre 4×4 of the 8 columns starts at column 2
    how = ImagePreprocessing(size=(4, 4), resize="crop", crop_pct=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    got = load_image(tmp_path / "wide.png", how, 3)
    np.testing.assert_allclose(got[0].transpose(1, 2, 0), pixels[:, 2:6] / 255, rtol=1e-6)
    # squash: straight to 4×4 — the same pixels as PIL's bilinear resize
    squash = load_image(tmp_path / "wide.png", ImagePreprocessing(size=(4, 4), resize="squash", mean=(0, 0, 0),
                                                                  std=(1, 1, 1)), 3)  # fmt: skip
    resized = np.asarray(Image.fromarray(pixels).resize((4, 4), Image.Resampling.BILINEAR), np.float32)
    np.testing.assert_allclose(squash[0].transpose(1, 2, 0), resized / 255, rtol=1e-6)


def test_timm_data_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"input_size": [3, 224, 224], "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5],
                                "std": [0.25, 0.25, 0.25], "crop_pct": 0.95, "crop_mode": "center"}))  # fmt: skip
    how = preprocessing_from_config(path)
    assert how == ImagePreprocessing((224, 224), "crop", 0.95, "bicubic", (0.5,) * 3, (0.25,) * 3, "rgb")
    path.write_text(json.dumps({"input_size": [3, 224], "mean": [0.5]}))
    with pytest.raises(InputError, match=r"config.json: 'input_size' must be a list of 3 numbers \(--data-config\)"):
        preprocessing_from_config(path)


def test_held_out_samples_are_never_calibration_samples(tmp_path):
    values = np.arange(20, dtype=np.float32)[:, None, None, None] * np.ones((1, 3, 4, 4), np.float32)
    np.savez(tmp_path / "c.npz", x=values)
    data = calibration_set(Calibration(tmp_path / "c.npz"), _model(), tmp_path / "m.onnx")
    calibrating = {float(s["x"].flat[0]) for s in data.calibrate}
    held = {float(s["x"].flat[0]) for s in data.held_out}
    assert (len(calibrating), len(held)) == (16, 4) and not calibrating & held
    assert calibrating | held == set(range(20))
    fewer = calibration_set(Calibration(tmp_path / "c.npz", samples=5, held_out=3), _model(), tmp_path / "m.onnx")
    assert (len(fewer.calibrate), len(fewer.held_out)) == (5, 3)
    assert data.origin == f"{tmp_path / 'c.npz'} (16 samples, 4 held out)" and not data.random


def test_image_folder_recursive_with_resize(tmp_path):
    for i, (h, w) in enumerate([(6, 9), (8, 5), (7, 7), (10, 12), (4, 4)]):
        (tmp_path / f"class{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(_pixels(h, w)).save(tmp_path / f"class{i % 2}" / f"{i}.jpg")
    how = ImagePreprocessing(size=(4, 4), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    data = calibration_set(Calibration(tmp_path, how, held_out=1), _model(), tmp_path / "m.onnx")
    assert len(data.calibrate) == 4 and len(data.held_out) == 1
    assert all(s["x"].shape == (1, 3, 4, 4) for s in data.calibrate + data.held_out)
    assert "4 images, 1 held out; images 4×4, crop (crop_pct 0.875), bilinear, RGB" in data.origin


@pytest.mark.parametrize(
    ("make", "calibration", "message"),
    [
        (lambda p: None, {}, "calibration folder holds no .npy, .npz or image files"),
        (lambda p: [Image.fromarray(_pixels(4, 4)).save(p / "a.png"), Image.fromarray(_pixels(4, 4)).save(p / "b.png"),
                    (p / "notes.txt").write_text("labels")],
         {"images": ImagePreprocessing(mean=(0, 0, 0), std=(1, 1, 1))}, "notes.txt: not an image (.jpg"),
        (lambda p: [Image.fromarray(_pixels(4, 4)).save(p / "a.png"), (p / "b.jpg").write_bytes(b"not a jpeg")],
         {"images": ImagePreprocessing(mean=(0, 0, 0), std=(1, 1, 1))}, "b.jpg: not an image PIL can read"),
        (lambda p: [Image.fromarray(_pixels(4, 4)[:, :, 0]).save(p / "grey.png"),
                    Image.fromarray(_pixels(4, 4)).save(p / "b.png")],
         {"images": ImagePreprocessing(mean=(0, 0, 0), std=(1, 1, 1))},
         "grey.png: 1 channel(s) (mode L), the model takes 3"),
        (lambda p: [Image.fromarray(_pixels(4, 4)).save(p / "a.png"), Image.fromarray(_pixels(4, 4)).save(p / "b.png")],
         {}, "--calibration: images need their normalization stated: pass --mean and --std"),
        (lambda p: [Image.fromarray(_pixels(4, 4)).save(p / "a.png"), Image.fromarray(_pixels(5, 4)).save(p / "b.png")],
         {"images": ImagePreprocessing(mean=(0, 0, 0), std=(1, 1, 1))},
         "b.png: 5×4 pixels, the model takes 4×4: pass --image-size (and --resize) to resize"),
        (lambda p: np.savez(p / "c.npz", x=np.ones((3, 3, 4, 4), np.float32)), {"samples": 3},
         "--calibration-samples: 3 asked, but {path} holds 3 sample(s) and 1 are held out to judge accuracy"),
        (lambda p: np.savez(p / "c.npz", x=np.ones((1, 3, 4, 4), np.float32)), {},
         "holds 1 sample(s); int8 needs at least 2 (one to calibrate, one held out to judge accuracy)"),
        (lambda p: np.savez(p / "c.npz", x=np.full((4, 3, 4, 4), np.nan, np.float32)), {},
         "c.npz: array 'x' holds NaN or infinity; inputs must be finite"),
    ],
    ids=["empty", "non-image", "unreadable", "channels", "no-normalization", "sizes", "too-few", "one", "nan"],
)  # fmt: skip
def test_bad_calibration_data(tmp_path, make, calibration, message):
    folder = tmp_path / "cal"
    folder.mkdir()
    make(folder)
    source = folder / "c.npz" if (folder / "c.npz").exists() else folder
    with pytest.raises(InputError) as raised:
        calibration_set(Calibration(source, **calibration), _model(), tmp_path / "m.onnx")
    assert message.format(path=source) in str(raised.value)


def test_mixed_sizes_refused_when_the_model_size_is_open(tmp_path):
    Image.fromarray(_pixels(4, 4)).save(tmp_path / "a.png")
    Image.fromarray(_pixels(6, 6)).save(tmp_path / "b.png")
    how = ImagePreprocessing(mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(InputError, match=r"b\.png: 6×6 pixels, a\.png is 4×4: pass --image-size to resize them"):
        calibration_set(Calibration(tmp_path, how), _model(size="H"), tmp_path / "m.onnx")
