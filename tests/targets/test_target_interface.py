"""compare and run go through the Target interface only: a target that builds first times the engines built with
the user's options, never rebuilt with defaults."""

from __future__ import annotations

import pytest

from sparsecut.exporter import export_checkpoint
from sparsecut.precision import FP32, Precision
from sparsecut.targets import BuildOptions, ProfileOptions, compare_models
from sparsecut.targets import base as targets_base
from tests.targets import fake_target


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(targets_base.TARGETS, "fake", "tests.targets.fake_target:FakeEngineTarget")
    fake_target.BUILDS.clear()
    fake_target.TIMED.clear()
    return fake_target


def test_compare_times_engines_built_with_the_users_options(tmp_path, checkpoint_factory, fake):
    export_checkpoint(checkpoint_factory("resnet-tiny"), tmp_path / "a.onnx", arch="resnet-tiny")
    (tmp_path / "b.onnx").write_bytes((tmp_path / "a.onnx").read_bytes())
    wanted = BuildOptions(precision=Precision("int8"), sparsity=True, batch=(1, 4, 8))
    report = compare_models(
        [tmp_path / "a.onnx", tmp_path / "b.onnx"],
        target="fake",
        build=wanted,
        options=ProfileOptions(iterations=6, warmup=1),
        rounds=3,
    )
    assert [("a.onnx", wanted), ("b.onnx", wanted)] == fake.BUILDS
    assert fake.TIMED == [".engine", ".engine"]  # the built engines were timed, nothing else
    assert report.target == "fake" and [v.model for v in report.variants] == [
        str(tmp_path / "a.onnx"),
        str(tmp_path / "b.onnx"),
    ]


def test_run_builds_every_variant_with_the_users_options(tmp_path, checkpoint_factory, fake):
    from sparsecut.workflow import RunOptions, run_workflow

    options = RunOptions(
        target="fake", sparsity=True, profile=ProfileOptions(iterations=6, warmup=1), rounds=3, tune_budget=5.0
    )
    report = run_workflow(checkpoint_factory("resnet-tiny"), tmp_path / "run", arch="resnet-tiny", options=options)
    # the lean candidates of the measured decision were built with the user's options too
    candidates = [o for name, o in fake.BUILDS if name == "lean.onnx"]
    assert len(candidates) >= 2 and all(o.sparsity for o in candidates)
    assert report.optimize.decision is not None and report.optimize.decision.target == "fake"
    variants = [(name, o) for name, o in fake.BUILDS if name in ("exported.onnx", "baseline.onnx", "lean.onnx")]
    assert [(name, o.sparsity, o.precision) for name, o in variants[-3:]] == [
        ("exported.onnx", True, FP32),
        ("baseline.onnx", True, FP32),
        ("lean.onnx", True, FP32),
    ]
    assert set(fake.TIMED) == {".engine"}
    assert sorted(p.name for p in (tmp_path / "run").glob("*.engine")) == [
        "baseline.engine",
        "exported.engine",
        "lean.engine",
    ]
    assert report.compare.target == "fake"
