"""What autograd will run: the names of the nodes of a tensor's backward graph, for tests that check which
copies and casts a backward makes."""

from __future__ import annotations

import torch


def graph_nodes(out: torch.Tensor) -> list[str]:
    """The names of the autograd nodes that out's backward runs."""
    seen, todo, names = set(), [out.grad_fn], []
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        todo += [next_node for next_node, _ in node.next_functions]
    return names
