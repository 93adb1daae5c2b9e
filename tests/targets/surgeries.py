"""Surgery functions for the `--surgery MODULE:FUNCTION` tests."""

import onnx_graphsurgeon as gs


def _relu_to_leaky(graph: gs.Graph, alpha: float) -> gs.Graph:
    for node in graph.nodes:
        if node.op == "Relu":
            node.op = "LeakyRelu"
            node.attrs["alpha"] = alpha
    return graph


def relu_to_leaky(graph: gs.Graph) -> gs.Graph:
    return _relu_to_leaky(graph, 0.0)


def relu_to_half_leaky(graph: gs.Graph) -> gs.Graph:
    """Changes what the model computes (negative inputs pass at half), so a build that ignored it shows."""
    return _relu_to_leaky(graph, 0.5)


def broken(graph: gs.Graph) -> str:
    return "not a graph"
