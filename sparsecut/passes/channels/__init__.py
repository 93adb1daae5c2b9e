"""Dead channels: which channels can go (`analysis.py`, from per-op rules in `rules/` over channel spaces in
`spaces.py`, attention blocks found by `heads.py`, decided in `constraints.py`, reported in `report.py`) and the
graph rewrite that removes them (`rewrite.py`)."""

from sparsecut.passes.channels.analysis import DeadChannelAnalysis
from sparsecut.passes.channels.constraints import ALIGNED, MEASURED, SHARED_WEIGHT, SLOWER_WHEN_REMOVED
from sparsecut.passes.channels.rewrite import ChannelRewrite, rewrite_channels
from sparsecut.passes.channels.rules import RULES, ChannelRule, Decline, Kind, Plan, register

__all__ = [
    "ALIGNED",
    "MEASURED",
    "RULES",
    "SHARED_WEIGHT",
    "SLOWER_WHEN_REMOVED",
    "ChannelRewrite",
    "ChannelRule",
    "DeadChannelAnalysis",
    "Decline",
    "Kind",
    "Plan",
    "register",
    "rewrite_channels",
]
