"""Surgery functions for the `--surgery MODULE:FUNCTION` tests."""

import onnx_graphsurgeon as gs


def relu_to_leaky(graph: gs.Graph) -> gs.Graph:
    for node in graph.nodes:
        if node.op == "Relu":
            node.op = "LeakyRelu"
            node.attrs["alpha"] = 0.0
    return graph


def broken(graph: gs.Graph) -> str:
    return "not a graph"


def relu_to_half_leaky(graph: gs.Graph) -> gs.Graph:
    """Changes what the model computes (negative inputs pass at half), so a build that ignored it shows."""
    for node in graph.nodes:
        if node.op == "Relu":
            node.op = "LeakyRelu"
            node.attrs["alpha"] = 0.5
    return graph
