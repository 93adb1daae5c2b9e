"""compare on two reference models, view, and the TensorRT target without TensorRT."""

from __future__ import annotations

import importlib.util
import json
import urllib.request

import pytest

from sparsecut.cli import main
from sparsecut.errors import TargetError
from sparsecut.exporter import export_checkpoint
from sparsecut.passes import optimize_model
from sparsecut.precision import FP32
from sparsecut.report import CompareReport
from sparsecut.targets import BuildOptions, ProfileOptions, compare_models, get_target
from sparsecut.viewer import serve_model, stop_serving


@pytest.fixture(scope="module")
def dense_and_lean(tmp_path_factory, checkpoint_factory):
    folder = tmp_path_factory.mktemp("compare")
    export_checkpoint(
        checkpoint_factory("resnet-bottleneck-tiny"), folder / "dense.onnx", arch="resnet-bottleneck-tiny"
    )
    optimize_model(folder / "dense.onnx", folder / "lean.onnx")
    return folder / "dense.onnx", folder / "lean.onnx"


def test_compare_two_variants(tmp_path, dense_and_lean):
    dense, lean = dense_and_lean
    rounds_seen = []
    report = compare_models(
        [dense, lean],
        options=ProfileOptions(iterations=20, warmup=2),
        rounds=4,
        plot=tmp_path / "plot.png",
        progress=lambda done, total: rounds_seen.append((done, total)),
    )
    first, second = report.variants
    assert report.baseline == 0
    assert second.macs < first.macs and second.params < first.params
    assert first.speedup.value == 1.0 and second.macs_ratio == second.macs / first.macs
    assert second.speedup.value == pytest.approx(first.latency.p50_ms / second.latency.p50_ms)  # measured
    assert second.speedup.low <= second.speedup.value <= second.speedup.high
    assert [v.latency.iterations for v in report.variants] == [20, 20]
    assert [len(v.rounds_ms) for v in report.variants] == [4, 4]
    assert rounds_seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_against_a_chosen_baseline(dense_and_lean):
    dense, lean = dense_and_lean
    report = compare_models([dense, lean], options=ProfileOptions(iterations=12, warmup=1), rounds=3, baseline=lean)
    assert report.baseline == 1 and report.variants[1].speedup.value == 1.0
    assert report.variants[0].macs_ratio == report.variants[0].macs / report.variants[1].macs > 1


def test_compare_cli_json_round_trip(tmp_path, dense_and_lean, capsys):
    out = tmp_path / "c.json"
    dense, lean = dense_and_lean
    assert main(["compare", str(dense), str(lean), "--iterations", "10", "--rounds", "3", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert CompareReport.from_dict(data).to_dict() == data
    assert "speedup" in capsys.readouterr().out


def test_view_serves_the_file(dense_and_lean):
    url = serve_model(dense_and_lean[1], port=18765, browse=False)
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
    finally:
        stop_serving(url)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_target_without_tensorrt_says_how_to_install(tmp_path, dense_and_lean):
    with pytest.raises(TargetError, match=r"needs NVIDIA TensorRT .* pip install 'sparsecut\[tensorrt\]'"):
        get_target("tensorrt").build(dense_and_lean[1], tmp_path / "lean.plan", BuildOptions())


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installable here (no wheel reachable)"
)
def test_tensorrt_build_and_profile(tmp_path, dense_and_lean):
    target = get_target("tensorrt")
    artifact, report = target.build(dense_and_lean[1], tmp_path / "lean.plan", BuildOptions(precision=FP32))
    latency = target.profile(artifact, ProfileOptions(iterations=20))
    assert latency.p50_ms > 0 and report.artifact.endswith("lean.plan")


def test_rounds_rotate_the_order_and_a_budget_stops_at_max_rounds():
    """Round r starts with variant r mod n (none always runs first); a budget's extra rounds stop at max_rounds."""
    import contextlib

    from sparsecut.targets.compare import _interleaved

    calls: list[str] = []

    class Recording:
        name = "fake"

        def runner(self, artifact, options):
            return contextlib.nullcontext(lambda: calls.append(artifact))

    runs = [(name, Recording()) for name in "abc"]
    samples = _interleaved(runs, ProfileOptions(iterations=3, warmup=0), 3, None, None)  # type: ignore[arg-type]
    assert "".join(calls) == "abc" + "abcbcacab" and [len(s) for s in samples] == [3, 3, 3]  # (a warm-up run each)
    calls.clear()
    capped = _interleaved(runs, ProfileOptions(iterations=3, warmup=0), 3, 60.0, None, max_rounds=5)  # type: ignore[arg-type]
    assert [len(s) for s in capped] == [5, 5, 5] and len(calls) == 3 + 15  # a 60 s budget, stopped after 5 rounds
