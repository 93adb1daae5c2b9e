"""Dead channels: which channels can go (`analysis.py`, from per-op rules in `rules.py` over channel spaces in
`spaces.py`, decided in `constraints.py`, reported in `report.py`) and the graph rewrite that removes them
(`rewrite.py`)."""

from sparsecut.passes.channels.analysis import DeadChannelAnalysis
from sparsecut.passes.channels.constraints import ALIGNED, MEASURED, SLOWER_WHEN_REMOVED
from sparsecut.passes.channels.rewrite import ChannelRewrite, rewrite_channels
from sparsecut.passes.channels.rules import RULES, ChannelRule, Kind, register

__all__ = [
    "ALIGNED",
    "MEASURED",
    "RULES",
    "SLOWER_WHEN_REMOVED",
    "ChannelRewrite",
    "ChannelRule",
    "DeadChannelAnalysis",
    "Kind",
    "register",
    "rewrite_channels",
]
