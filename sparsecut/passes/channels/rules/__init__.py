"""Channel rules, one module per op family; importing the package registers them all (see base.py for the
interface). The attention rule of blocks in plain ops (attention.py) is not registered by op type: the analysis
makes one per block; onnxruntime's GroupQueryAttention node has a registered rule of its own."""

from sparsecut.passes.channels.rules import (
    attention,
    elementwise,
    index_maps,
    layout,
    normalization,
    rms,
    spatial,
    weighted,
)
from sparsecut.passes.channels.rules.base import (
    DOMAIN_RULES,
    ORDER_FREE,
    READERS,
    RULES,
    ChannelRule,
    Decline,
    Keep,
    Kind,
    Plan,
    elementwise_ops,
    register,
    rule_for,
)

__all__ = [
    "DOMAIN_RULES",
    "ORDER_FREE",
    "READERS",
    "RULES",
    "ChannelRule",
    "Decline",
    "Keep",
    "Kind",
    "Plan",
    "attention",
    "elementwise",
    "elementwise_ops",
    "index_maps",
    "layout",
    "normalization",
    "register",
    "rms",
    "rule_for",
    "spatial",
    "weighted",
]
