"""What a queued run asks for, what an agent has free, whether one fits the other, and why a run still waits.

Pure functions over plain records, so that the claim transaction (``pools_state``) and the explanations of
``GET /runs/{run_id}/queue`` (``pools``) judge a fit by the same rule:

- a run fits an agent when the agent has a free slot, every label the run asks for, at least ``cpus`` CPUs and
  ``memory_mb`` of memory not held by its other running attempts (an agent that did not report one of those
  is not limited by it), and ``gpus`` free GPUs with at least ``gpu_memory_mb`` each;
- a free GPU is one of the agent's GPUs that no running attempt holds (the ledger, in the database) and that
  the agent itself reported free at its last poll; the lowest indices are given first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rundock.history.wire import Gpu

REQUIREMENT_KEYS = ("gpus", "gpu_memory_mb", "cpus", "memory_mb", "labels", "nodes")


@dataclasses.dataclass(frozen=True)
class Requirements:
    """What one run needs on the agent that takes it (0: nothing asked)."""

    gpus: int = 0
    gpu_memory_mb: int = 0
    cpus: int = 0
    memory_mb: int = 0
    labels: tuple[str, ...] = ()
    nodes: int = 1  # a multi-node run needs this many agents at once, each with all of the above (``pools_gang``)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Requirements:
        """Checked requirements; ValueError naming the field for an unknown key or a bad value."""
        data = data or {}
        unknown = sorted(set(data) - set(REQUIREMENT_KEYS))
        if unknown:
            raise ValueError(f"field 'requirements.{unknown[0]}': not a requirement; expected "
                             f"{', '.join(REQUIREMENT_KEYS)}")
        numbers: dict[str, int] = {}
        for key in REQUIREMENT_KEYS[:4]:
            value = data.get(key) or 0
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 40:
                raise ValueError(f"field 'requirements.{key}': expected a whole number, at least 0, got {value!r}")
            numbers[key] = value
        labels = data.get("labels") or []
        if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
            raise ValueError("field 'requirements.labels': expected a list of label names")
        nodes = data.get("nodes", 1)
        if not isinstance(nodes, int) or isinstance(nodes, bool) or not 1 <= nodes <= 1024:
            raise ValueError(f"field 'requirements.nodes': expected a whole number from 1 to 1024, got {nodes!r}")
        return cls(labels=tuple(dict.fromkeys(x.strip() for x in labels)), nodes=nodes, **numbers)

    def to_json(self) -> dict[str, Any]:
        return {"gpus": self.gpus, "gpu_memory_mb": self.gpu_memory_mb, "cpus": self.cpus,
                "memory_mb": self.memory_mb, "labels": list(self.labels),
                **({"nodes": self.nodes} if self.nodes > 1 else {})}




@dataclasses.dataclass(frozen=True)
class Capacity:
    """What one agent has left now."""

    slots: int
    free_gpus: tuple[Gpu, ...]
    cpus: int | None  # None: not reported, not limited
    memory_mb: int | None
    labels: frozenset[str]

    def take(self, requirements: Requirements, gpus: Sequence[int]) -> Capacity:
        """What is left once a run with ``requirements`` holds ``gpus``."""
        return Capacity(self.slots - 1, tuple(g for g in self.free_gpus if g.index not in gpus),
                        None if self.cpus is None else self.cpus - requirements.cpus,
                        None if self.memory_mb is None else self.memory_mb - requirements.memory_mb, self.labels)


def capacity(slots: int, gpus: Iterable[Gpu], cpus: int | None, memory_mb: int | None, labels: Iterable[str],
             running: Iterable[tuple[Sequence[int], Requirements]], reported_free: Iterable[int] | None) -> Capacity:
    """An agent's capacity once its ``running`` attempts (their GPUs, their requirements) are taken out;
    ``reported_free``: the GPU indices the agent says are free (None: all of those the ledger leaves)."""
    held: set[int] = set()
    used_cpus = used_memory = count = 0
    for indices, requirements in running:
        held.update(indices)
        used_cpus += requirements.cpus
        used_memory += requirements.memory_mb
        count += 1
    free = set(reported_free) if reported_free is not None else None
    left = tuple(sorted((g for g in gpus if g.index not in held and (free is None or g.index in free)),
                        key=lambda g: g.index))
    return Capacity(slots - count, left, None if cpus is None else cpus - used_cpus,
                    None if memory_mb is None else memory_mb - used_memory, frozenset(labels))


def fit(requirements: Requirements, cap: Capacity) -> tuple[int, ...] | None:
    """The GPU indices the run would get on an agent with ``cap`` free (``()`` for none), or None if it does not
    fit there now."""
    if cap.slots < 1 or not set(requirements.labels) <= cap.labels:
        return None
    if cap.cpus is not None and requirements.cpus > cap.cpus:
        return None
    if cap.memory_mb is not None and requirements.memory_mb > cap.memory_mb:
        return None
    usable = [g.index for g in cap.free_gpus if g.memory_mb >= requirements.gpu_memory_mb]
    if len(usable) < requirements.gpus:
        return None
    return tuple(usable[:requirements.gpus])


def shown_memory(mb: int) -> str:
    """``81920`` -> ``80 GB`` (a whole number of GB); otherwise in MB as asked for: ``80000`` -> ``80,000 MB``."""
    return f"{mb // 1024} GB" if mb >= 1024 and mb % 1024 == 0 else f"{mb:,} MB"


@dataclasses.dataclass(frozen=True)
class AgentView:
    """One online agent as the explanations see it: all it has, and what it has free now."""

    gpus: tuple[Gpu, ...]
    cpus: int | None
    memory_mb: int | None
    labels: frozenset[str]
    slots: int
    free: Capacity


def never_fits(pool: str, requirements: Requirements, agents: Sequence[AgentView]) -> str | None:
    """Why no online agent of ``pool`` could ever take the run, even idle (None: one could)."""
    if not agents:
        return f"no agent in pool {pool} is online"
    for label in requirements.labels:
        if not any(label in a.labels for a in agents):
            return f"no agent of pool {pool} has label {label}"
    if requirements.gpu_memory_mb and not any(g.memory_mb >= requirements.gpu_memory_mb
                                              for a in agents for g in a.gpus):
        return f"no agent of pool {pool} has {shown_memory(requirements.gpu_memory_mb)} GPUs"
    if requirements.gpus and not any(sum(g.memory_mb >= requirements.gpu_memory_mb for g in a.gpus)
                                     >= requirements.gpus for a in agents):
        size = f" of {shown_memory(requirements.gpu_memory_mb)}" if requirements.gpu_memory_mb else ""
        return f"no agent of pool {pool} has {requirements.gpus} GPU{'s' if requirements.gpus != 1 else ''}{size}"
    if requirements.cpus and not any(a.cpus is None or a.cpus >= requirements.cpus for a in agents):
        return f"no agent of pool {pool} has {requirements.cpus} CPUs"
    if requirements.memory_mb and not any(a.memory_mb is None or a.memory_mb >= requirements.memory_mb
                                          for a in agents):
        return f"no agent of pool {pool} has {shown_memory(requirements.memory_mb)} of memory"
    idle = [Capacity(a.slots, a.gpus, a.cpus, a.memory_mb, a.labels) for a in agents]
    if not any(fit(requirements, cap) is not None for cap in idle):
        return f"no agent of pool {pool} has all it asks for at once ({asked(requirements)})"
    return None


def waiting_reason(pool: str, requirements: Requirements, agents: Sequence[AgentView], ahead: int) -> str:
    """Why a queued run that some agent of ``pool`` could take still waits, ``ahead`` runs before it."""
    runs_ahead = f"{ahead} run{'s' if ahead != 1 else ''} ahead"
    if any(fit(requirements, a.free) is not None for a in agents):
        return runs_ahead if ahead else f"next in line: an agent of pool {pool} takes it at its next poll"
    if requirements.gpus:
        total = sum(len(a.gpus) for a in agents)
        free = sum(len(a.free.free_gpus) for a in agents)
        busy = f"all {total} GPUs of pool {pool} are busy" if free == 0 else \
            f"{free} of the {total} GPUs of pool {pool} are free, not {requirements.gpus} on one agent"
    elif not any(a.free.slots > 0 for a in agents):
        busy = f"all {sum(a.slots for a in agents)} slots of pool {pool} are busy"
    else:
        busy = f"no agent of pool {pool} has enough free now ({asked(requirements)})"
    return f"{busy}; {runs_ahead}" if ahead else busy


def asked(requirements: Requirements) -> str:
    parts = []
    if requirements.gpus:
        size = f" of {shown_memory(requirements.gpu_memory_mb)}" if requirements.gpu_memory_mb else ""
        parts.append(f"{requirements.gpus} GPU{'s' if requirements.gpus != 1 else ''}{size}")
    if requirements.cpus:
        parts.append(f"{requirements.cpus} CPUs")
    if requirements.memory_mb:
        parts.append(f"{shown_memory(requirements.memory_mb)} of memory")
    parts += [f"label {label}" for label in requirements.labels]
    return ", ".join(parts) or "a slot"
