"""A subset of benchmarks/zoo.py as `slow` tests: real topologies masked by Torch-Pruning's choice and exported
by both of PyTorch's exporters — exact after optimize, no rule error, and (where Torch-Pruning's physical model
computes what the masked one does) at least 95 % of the weights it removed removed by sparsecut too. The
TorchScript exports of EfficientNet-B0 and MobileNetV3 are the recipes of a regression that reached main: every
dead channel removable there. timm, Torch-Pruning and ultralytics are benchmark-only dependencies: skipped when
missing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TVSHIM = ROOT.parent / "shared" / "tvshim.py"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zoo():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # zoo.py imports its neighbours, as when run as a script
    if TVSHIM.exists():  # before anything imports torchvision (Torch-Pruning tries to)
        import common

        common.load_tvshim(TVSHIM)
    pytest.importorskip(
        "torch_pruning", reason="Torch-Pruning is a benchmark-only dependency (pip install torch-pruning)"
    )
    spec = importlib.util.spec_from_file_location("zoo", ROOT / "benchmarks" / "zoo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["zoo"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "family", ["shufflenet", "unet", "resnet", "convnext", "efficientnet", "mobilenetv3", "yolov8n", "levit"]
)
def test_zoo_model_is_exact_and_loses_what_torch_pruning_removes(zoo, family, tmp_path):
    source = zoo.FAMILIES[family].source
    if source.startswith("timm"):
        if not TVSHIM.exists():
            pytest.skip(f"timm needs {TVSHIM} on these machines")
        pytest.importorskip("timm", reason="timm is a benchmark-only dependency (pip install timm)")
    if source.startswith("ultralytics"):
        pytest.importorskip(
            "ultralytics", reason="ultralytics is a benchmark-only dependency (pip install ultralytics)"
        )
    rows = zoo.bench(family, tmp_path, ratio=0.4, rounds=3, iterations=3)  # 3: an interval needs them
    assert [row["exporter"] for row in rows] == ["dynamo", "torchscript"]
    for row in rows:
        assert row["exact_max_rel_error"] <= 1e-4
        assert row["rule_errors"] == []
        assert row["params_lean"] < row["params_masked"]
        if row["tp_exact"] and not row["layernorm_family"]:
            assert row["removed_fraction"] >= 0.95, row
        if family in ("efficientnet", "mobilenetv3"):  # the regression: every dead channel goes, both exporters
            assert row["kept_dead"] == {}, row
