"""sparsecut: turn pruned PyTorch checkpoints into lean, verified ONNX and measure their real latency."""

__version__ = "0.1.0"
