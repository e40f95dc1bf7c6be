"""The Airflow task graph derived from the stages of dvc.yaml (read by m6rec.dvcfiles)."""

from __future__ import annotations

from collections.abc import Mapping

from m6rec.dvcfiles import Stage
from m6rec.orchestration.tasks import OrchestrationError


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _closure(graph: Mapping[str, set[str]], start: str) -> set[str]:
    """Every node reachable from `start` following `graph` (start excluded)."""
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return seen


def stage_graph(stages: list[Stage], gate: str = "validate", promote: str = "register") -> dict[str, list[str]]:
    """Upstream stages of every stage, keys and lists in dvc.yaml order.

    Edges come from data flow (a dep equal to, inside or containing another stage's out, metric or plot), as DVC
    itself links stages. Two policy edges are added: every stage that does not feed the `gate` runs after it (no
    training on unchecked data, even for a stage that reads data/prepared by mistake), and `promote` runs after
    every stage that is not downstream of it. Redundant (transitive) edges are dropped so the Airflow graph stays
    readable.
    """
    names = [s.name for s in stages]
    order = {n: i for i, n in enumerate(names)}
    up: dict[str, set[str]] = {
        s.name: {o.name for o in stages if o.name != s.name and any(_overlaps(d, x) for d in s.deps for x in o.writes)}
        for s in stages
    }
    for name in names:
        if name in _closure(up, name):
            raise OrchestrationError(f"dvc.yaml: stage '{name}' depends on itself through its deps/outs")
    if gate in up:
        before_gate = _closure(up, gate)
        for name in names:
            if name != gate and name not in before_gate and gate not in _closure(up, name):
                up[name].add(gate)
    if promote in up:
        down = {n for n in names if promote in _closure(up, n)}
        up[promote] |= {n for n in names if n != promote and n not in down}
        if promote in _closure(up, promote):
            raise OrchestrationError(f"dvc.yaml: '{promote}' cannot run last: a stage it feeds also feeds it")
    reduced = {}
    for name in names:
        direct = up[name]
        keep = {u for u in direct if not any(u in _closure(up, v) for v in direct if v != u)}
        reduced[name] = sorted(keep, key=order.__getitem__)
    return reduced
