"""`sparsecut sweep --ray` on a Ray cluster of fake device nodes on this machine (Ray's own cluster_utils.Cluster):
cells land on the nodes of their device class, a node never times two cells at once, a node lost mid-cell has
its cell run again on another node of the class (or failed, with why, when none is left), and the grid is checked
against the cluster before anything runs. Every cluster is shut down by its fixture; nothing else is stopped."""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
import time
from pathlib import Path

import onnx
import pytest

from sparsecut.errors import InputError
from sparsecut.sweep import Device, Grid, SweepInput, run_sweep
from tests.passes.graphs import GraphBuilder

ray = pytest.importorskip("ray", reason="Ray is sparsecut's [ray] extra (pip install 'sparsecut[ray]')")
cluster_utils = pytest.importorskip("ray.cluster_utils")

from sparsecut.sweep.onray import DeviceLost, RayExecutor, device_resource  # noqa: E402


def model(path: Path, size: int) -> Path:
    """conv 8 → 32 (13 dead) → ReLU → conv 32 → 16, 3×3, on size × size: about 1 ms a run at 96."""
    g = GraphBuilder(shape=(8, size, size))
    hidden = g.op("Relu", [g.conv("x", g.weight(32, 8, 3, 3, dead_rows=tuple(range(0, 26, 2))), pad=1)])
    onnx.save(g.model(g.conv(hidden, g.weight(16, 32, 3, 3), pad=1)), path)
    return path


@pytest.fixture
def cluster(monkeypatch):
    """A head without devices and one node each of device classes dev-a and dev-b. Its processes get a temporary
    folder of their own (TMPDIR), removed with the cluster: a node the test removes mid-cell is killed and leaves
    the cell's folder behind, as a lost machine would."""
    own_tmp = tempfile.mkdtemp(prefix="sc-ray-")  # short: Ray's socket paths under it must stay < 108 characters
    monkeypatch.setenv("TMPDIR", own_tmp)
    c = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes = {name: c.add_node(num_cpus=1, resources={device_resource(name): 1}) for name in ("dev-a", "dev-b")}
    c.wait_for_nodes()
    yield c, nodes
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()
    shutil.rmtree(own_tmp, ignore_errors=True)


def grid(tmp_path: Path, devices: tuple[str, ...], iterations: int = 5, sizes=(16, 24)) -> Grid:
    inputs = tuple(SweepInput(model(tmp_path / f"m{s}.onnx", s)) for s in sizes)
    return Grid(inputs=inputs, modes=("align 1", "align 8"), devices=tuple(Device.parse(d, "test") for d in devices),
                rounds=3, iterations=iterations)  # fmt: skip


def test_cells_land_on_their_device_and_a_device_times_one_cell_at_a_time(cluster, tmp_path):
    c, nodes = cluster
    with RayExecutor(c.address) as executor:
        assert set(executor.classes()) == {"dev-a", "dev-b"}
        report = run_sweep(grid(tmp_path, ("onnxruntime@dev-a", "onnxruntime@dev-b")), tmp_path / "out", executor)
    assert [c.status for c in report.cells] == ["ok"] * 4
    for cell in report.cells:
        device = cell.device.split("@")[1]
        assert cell.node.split()[-1] == nodes[device].node_id  # the node that has the class
    for device in ("dev-a", "dev-b"):
        spans = sorted((c.started, c.ended) for c in report.cells if c.device.endswith(device))
        assert all(first[1] <= second[0] for first, second in itertools.pairwise(spans))  # never overlap


def test_a_node_lost_mid_cell_has_its_cell_run_on_another_node_of_its_class(cluster, tmp_path):
    c, nodes = cluster
    spare = c.add_node(num_cpus=1, resources={device_resource("dev-a"): 1})
    c.wait_for_nodes()
    sweep = grid(tmp_path, ("onnxruntime@dev-a",), iterations=300, sizes=(96,))
    found = {}
    with RayExecutor(c.address) as executor:
        worker = threading.Thread(target=lambda: found.update(report=run_sweep(sweep, tmp_path / "out", executor)))
        worker.start()
        running = _running_node(c)
        victim = next(n for n in (nodes["dev-a"], spare) if n.node_id == running)
        c.remove_node(victim)
        worker.join(timeout=300)
    (cell,) = found["report"].cells
    assert cell.status == "ok" and cell.node.split()[-1] != running  # run again, elsewhere


def test_with_no_node_of_its_class_left_the_cell_fails_with_why(cluster, tmp_path):
    c, nodes = cluster
    sweep = grid(tmp_path, ("onnxruntime@dev-a", "onnxruntime@dev-b"), iterations=300, sizes=(96,))
    found = {}
    with RayExecutor(c.address, lost_after=2.0) as executor:
        worker = threading.Thread(target=lambda: found.update(report=run_sweep(sweep, tmp_path / "out", executor)))
        worker.start()
        _running_node(c)
        c.remove_node(nodes["dev-a"])
        worker.join(timeout=300)
    lost, kept = found["report"].cells
    assert lost.status == "failed" and lost.reason == (
        "no node of device class 'dev-a' is alive (lost during the sweep; waited 2 s for one)"
    )
    assert kept.status == "ok"  # the rest of the table completes


def test_a_device_class_the_cluster_lacks_is_named_before_anything_runs(cluster, tmp_path):
    c, _ = cluster
    with RayExecutor(c.address) as executor, pytest.raises(InputError) as raised:
        run_sweep(grid(tmp_path, ("onnxruntime@dev-c",)), tmp_path / "out", executor)
    assert str(raised.value).startswith("sweep: no node has device class 'dev-c' (there are: dev-a (")
    assert not (tmp_path / "out").exists()


def test_an_unreachable_cluster_is_one_line():
    with pytest.raises(InputError) as raised:
        RayExecutor("127.0.0.1:1")
    assert str(raised.value).startswith("--ray 127.0.0.1:1: no Ray cluster reachable there")
    assert not ray.is_initialized()


def test_device_lost_is_a_reason_not_a_crash():
    assert str(DeviceLost("x")) == "x"


def _running_node(c) -> str:
    """The id of the node whose device unit a timing cell holds, once one does (Ray's per-node availability: its
    state API needs the dashboard, which plain `ray` does not install)."""
    from ray._private.state import state

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        totals = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
        for node, available in state.available_resources_per_node().items():
            devices = [r for r in totals.get(node, {}) if r.startswith("sparsecut_device_")]
            if devices and available.get(devices[0], 0.0) < 1.0:  # (a resource all in use is left out)
                return str(node)
        time.sleep(0.1)
    raise AssertionError("no timing cell started")


def test_ray_local_gives_the_cells_the_local_sweep_gives(tmp_path):
    """`--ray local`: a throwaway one-machine Ray with this machine's class and `local`, stopped after."""
    sweep = grid(tmp_path, ("onnxruntime@local",))
    here = run_sweep(sweep, tmp_path / "here")
    with RayExecutor("local") as executor:
        assert "local" in executor.classes()
        there = run_sweep(sweep, tmp_path / "there", executor)
    assert not ray.is_initialized()
    assert [(c.key, c.status, [r.mode for r in c.rows]) for c in here.cells] == [
        (c.key, c.status, [r.mode for r in c.rows]) for c in there.cells
    ]
    assert [[r.params for r in c.rows] for c in here.cells] == [[r.params for r in c.rows] for c in there.cells]


def test_optimize_measures_on_a_device_node(cluster, tmp_path, capsys):
    """`optimize --target onnxruntime --ray ADDRESS --ray-device CLASS`: the counts measured on that node, the
    lean graph written here, gated as always; a class no node has is one line, nothing written."""
    from sparsecut.cli import main

    c, _ = cluster
    source = model(tmp_path / "m.onnx", 16)
    argv = ["optimize", str(source), "-o", str(tmp_path / "lean.onnx"), "--target", "onnxruntime", "--ray",
            c.address, "--ray-device", "dev-b", "--lut", str(tmp_path / "lut.json"), "--tune-budget", "5"]  # fmt: skip
    assert main(argv) == 0
    assert (tmp_path / "lean.onnx").exists() and (tmp_path / "lut.json").exists()  # (the node is this machine)
    assert not ray.is_initialized()
    capsys.readouterr()
    argv[argv.index("dev-b")] = "dev-z"
    argv[argv.index(str(tmp_path / "lean.onnx"))] = str(tmp_path / "other.onnx")
    assert main(argv) == 2
    assert (
        capsys.readouterr().err.strip() == "error: --ray-device dev-z: no node of that class (there are: dev-a, dev-b)"
    )
    assert not (tmp_path / "other.onnx").exists()
