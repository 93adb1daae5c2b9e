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
