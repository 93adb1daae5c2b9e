"""A sweep on a Ray cluster: graph work as ordinary tasks wherever there is room, timing cells pinned to the nodes
of their device class.

A node says what device it is with a Ray custom resource, `sparsecut_device_<CLASS>: 1` (`sparsecut ray-node`
prints the `ray start` line; its class is derived from the machine — backend-neutral: the CPU and its vector
extensions, the GPU): a timing cell asks for one unit of its class, so a node times one cell at a time and a
cell lands only on a node of its class. Graphs travel through Ray's object store (each built once: the runner
addresses them by content). A node lost mid-cell: Ray runs the cell again on another node of the class (up to
`retries` times); with none of the class left alive for `lost_after` seconds the cell is reported failed, with
why, and the rest of the table goes on.

`--ray local` starts a throwaway one-machine Ray (this machine's class, and `local`) and stops it after; `--ray
auto` or `--ray ADDRESS` joins a running cluster (and leaves it running). Nothing here stops a cluster it did not
start.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from sparsecut.errors import InputError, SparsecutError
from sparsecut.sweep.grid import LOCAL

__all__ = ["PREFIX", "DeviceLost", "RayExecutor", "device_class", "device_resource"]

PREFIX = "sparsecut_device_"


class DeviceLost(SparsecutError):
    """No node of a cell's device class is alive any more."""


def device_resource(name: str) -> str:
    return PREFIX + name


def device_class() -> str:
    """This machine's device class: its GPU if it has one, else its CPU and vector extensions, as a resource name
    (`amd-epyc-avx512-vnni`)."""
    from sparsecut.targets.environment import cpu_name, cpu_vector_extensions, gpu_name

    gpu = gpu_name()
    if gpu:
        text = gpu
    else:
        extensions = cpu_vector_extensions()
        vector = (
            "avx512"
            if "avx512f" in extensions
            else "avx2"
            if "avx2" in extensions
            else "neon"
            if "neon" in extensions
            else ""
        )
        vnni = "-vnni" if "vnni" in extensions else ""
        text = f"{cpu_name()} {vector}{vnni}"
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "cpu"


def _reachable(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT that accepts no connection is refused now (Ray's own connect retries for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise InputError(f"--ray {address}: no Ray cluster reachable there ({exc.strerror or exc})") from None


class RayExecutor:
    """The runner's executor (runner.Executor) on Ray."""

    def __init__(self, address: str, retries: int = 2, lost_after: float = 10.0) -> None:
        try:
            import ray
        except ImportError:
            raise InputError("--ray: Ray is not installed here; pip install 'sparsecut[ray]'") from None
        self.ray = ray
        self.retries = retries
        self.lost_after = lost_after
        self.started = False
        self._device: dict[Any, str] = {}
        if ray.is_initialized():
            raise InputError("--ray: this process is already connected to a Ray cluster")
        if address == "local":  # a throwaway one-machine cluster: this machine's class, and `local`
            resources = {device_resource(LOCAL): 1.0, device_resource(device_class()): 1.0}
            ray.init(num_cpus=os.cpu_count() or 1, resources=resources, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)  # fmt: skip
            self.started = True
        else:
            _reachable(address)
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise InputError(f"--ray {address}: no Ray cluster reachable there ({first[:200]})") from None
        self.name = f"ray {address}"

    def close(self) -> None:
        """Disconnect; a cluster this executor started is stopped (only that one)."""
        if self.ray.is_initialized():
            self.ray.shutdown()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def classes(self) -> dict[str, str]:
        found: dict[str, list[str]] = {}
        for node in self.ray.nodes():
            if not node.get("Alive"):
                continue
            for resource in node.get("Resources", {}):
                if resource.startswith(PREFIX):
                    found.setdefault(resource.removeprefix(PREFIX), []).append(node.get("NodeManagerAddress", "?"))
        return {name: ", ".join(sorted(where)) for name, where in found.items()}

    def submit(self, fn: Callable[..., Any], *args: Any, returns: int = 1) -> Any:
        task = self.ray.remote(fn).options(num_cpus=1, num_returns=returns, max_retries=self.retries)
        return task.remote(*args)

    def submit_timing(self, device: str, fn: Callable[..., Any], *args: Any) -> Any:
        task = self.ray.remote(fn).options(num_cpus=1, resources={device_resource(device): 1.0},
                                           max_retries=self.retries, retry_exceptions=False)  # fmt: skip
        handle = task.remote(*args)
        self._device[handle] = device
        return handle

    def wait(self, handles: list[Any]) -> list[Any | BaseException]:
        results: list[Any | BaseException] = []
        for handle in handles:
            try:
                results.append(self.ray.get(handle))
            except Exception as exc:  # the task's own error (RayTaskError wraps it: runner reads its cause)
                results.append(exc)
        return results

    def done(self, handles: list[Any]) -> Iterator[tuple[Any, Any | BaseException]]:
        pending = list(handles)
        orphaned: dict[Any, float] = {}  # handle → since when no node of its class is alive
        while pending:
            ready, pending = self.ray.wait(pending, num_returns=1, timeout=1.0)
            for handle in ready:
                try:
                    yield handle, self.ray.get(handle)
                except Exception as exc:
                    yield handle, exc
            alive = self.classes()
            now = time.monotonic()
            for handle in list(pending):
                device = self._device.get(handle, "")
                if device in alive:
                    orphaned.pop(handle, None)
                    continue
                since = orphaned.setdefault(handle, now)
                if now - since >= self.lost_after:
                    self.ray.cancel(handle, force=True)
                    pending.remove(handle)
                    yield (
                        handle,
                        DeviceLost(
                            f"no node of device class {device!r} is alive (lost during the sweep; "
                            f"waited {self.lost_after:g} s for one)"
                        ),
                    )
