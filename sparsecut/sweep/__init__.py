"""`sparsecut sweep`: every input × precision × channel mode timed on every device named, each cell on its own
machine, one table (grid.py: what; work.py: the work itself; runner.py: in what order, with results streamed and
resumable; onray.py: on a Ray cluster, cells pinned to the nodes of their device class)."""

from sparsecut.sweep.grid import LOCAL, Device, Grid, SweepInput, load_grid
from sparsecut.sweep.runner import RESULTS, LocalExecutor, run_sweep

__all__ = ["LOCAL", "RESULTS", "Device", "Grid", "LocalExecutor", "SweepInput", "load_grid", "run_sweep"]
