"""The ordering map o (DAG -> layer sequence) and its inverse (paper Section 3.1, Lemma 7.2).

`topological_order` accepts a DAG only if its topological order is unique (at every step exactly
one node is ready), which Lemma 7.2 guarantees when consecutive layers are connected; the
sequential `Arch` additionally needs the graph to be exactly a chain (no skip connections).
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

from ac_jax.arch.spec import Arch, Layer

Edge = tuple[Hashable, Hashable]


def topological_order(nodes: Sequence[Hashable], edges: Sequence[Edge]) -> list:
    """Kahn's algorithm; `ValueError` on a cycle, an unknown node or a non-unique order."""
    known = set(nodes)
    successors: dict = {n: [] for n in nodes}
    indegree = {n: 0 for n in nodes}
    for u, v in edges:
        if u not in known or v not in known:
            raise ValueError(f"edge {u!r} -> {v!r} names a node that is not in the graph")
        successors[u].append(v)
        indegree[v] += 1
    ready = [n for n in nodes if indegree[n] == 0]
    order = []
    while ready:
        if len(ready) > 1:
            raise ValueError(
                f"topological order is not unique: {ready[0]!r} and {ready[1]!r} are both "
                "ready (Lemma 7.2 needs an edge between consecutive layers)"
            )
        node = ready.pop()
        order.append(node)
        for succ in successors[node]:
            indegree[succ] -= 1
            if indegree[succ] == 0:
                ready.append(succ)
    if len(order) != len(nodes):
        raise ValueError("graph has a cycle: it is not a DAG, so it has no topological order")
    return order


def dag_to_arch(
    layers: Mapping[Hashable, Layer],
    edges: Sequence[Edge],
    input_shape: Sequence[int],
    num_classes: int,
) -> Arch:
    """o: a chain-shaped DAG of layers -> `Arch` (rejects skip connections with a clear error)."""
    order = topological_order(list(layers), edges)
    chain = {(order[i], order[i + 1]) for i in range(len(order) - 1)}
    extra = [e for e in edges if tuple(e) not in chain]
    if extra:
        raise ValueError(
            f"edge {extra[0][0]!r} -> {extra[0][1]!r} is a skip connection; only sequential "
            "networks are representable as a layer sequence"
        )
    return Arch(tuple(input_shape), num_classes, tuple(layers[n] for n in order))


def arch_to_dag(arch: Arch) -> tuple[dict[int, Layer], list[Edge]]:
    """o^-1: layers named 0..n-1 and the chain of edges between consecutive ones."""
    nodes = dict(enumerate(arch.layers))
    return nodes, [(i, i + 1) for i in range(len(arch.layers) - 1)]
