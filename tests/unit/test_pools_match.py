"""Whether a run fits an agent, which GPUs it gets, and the words that say why a run waits."""

from __future__ import annotations

import pytest

from rundock.history.wire import Gpu
from rundock.server.pools_match import (
    AgentView,
    Capacity,
    Requirements,
    capacity,
    fit,
    never_fits,
    waiting_reason,
)

A100_80 = tuple(Gpu(i, "A100", 81920) for i in range(4))


def idle(gpus: tuple[Gpu, ...] = A100_80, slots: int = 4, labels: frozenset[str] = frozenset(),
         cpus: int | None = 32, memory_mb: int | None = 256 * 1024) -> AgentView:
    return AgentView(gpus, cpus, memory_mb, labels, slots, Capacity(slots, gpus, cpus, memory_mb, labels))


def test_gpus_held_by_running_attempts_or_reported_busy_are_not_given() -> None:
    cap = capacity(4, A100_80, 32, None, ["ib"], [((0, 1), Requirements(gpus=2, cpus=8))], reported_free=[1, 2, 3])
    assert [g.index for g in cap.free_gpus] == [2, 3] and cap.slots == 3 and cap.cpus == 24
    assert fit(Requirements(gpus=2, labels=("ib",)), cap) == (2, 3)
    assert fit(Requirements(gpus=3), cap) is None
    assert fit(Requirements(cpus=25), cap) is None
    assert fit(Requirements(memory_mb=1 << 30), cap) == ()  # the agent did not say: not limited
    taken = cap.take(Requirements(gpus=1, cpus=4), (2,))
    assert [g.index for g in taken.free_gpus] == [3] and taken.slots == 2 and taken.cpus == 20


def test_gpu_memory_picks_the_gpus_big_enough() -> None:
    mixed = (Gpu(0, "T4", 15360), Gpu(1, "A100", 81920), Gpu(2, "T4", 15360), Gpu(3, "A100", 81920))
    cap = capacity(2, mixed, None, None, [], [], None)
    assert fit(Requirements(gpus=2, gpu_memory_mb=40000), cap) == (1, 3)
    assert fit(Requirements(gpus=3, gpu_memory_mb=40000), cap) is None
    assert fit(Requirements(gpus=1), Capacity(0, mixed, None, None, frozenset())) is None  # no slot


@pytest.mark.parametrize(("requirements", "reason"), [
    (Requirements(labels=("nvme",)), "no agent of pool a100 has label nvme"),
    (Requirements(gpus=1, gpu_memory_mb=163840), "no agent of pool a100 has 160 GB GPUs"),
    (Requirements(gpus=8), "no agent of pool a100 has 8 GPUs"),
    (Requirements(gpus=5, gpu_memory_mb=81920), "no agent of pool a100 has 5 GPUs of 80 GB"),
    (Requirements(cpus=64), "no agent of pool a100 has 64 CPUs"),
    (Requirements(memory_mb=512 * 1024), "no agent of pool a100 has 512 GB of memory"),
    (Requirements(gpus=1, gpu_memory_mb=100000), "no agent of pool a100 has 100,000 MB GPUs"),
    (Requirements(gpus=4, labels=("ib",)), "no agent of pool a100 has all it asks for at once (4 GPUs, label ib)"),
    (Requirements(gpus=2, labels=("ib",)), None),
])
def test_a_run_no_agent_could_take_says_what_is_missing(requirements: Requirements, reason: str | None) -> None:
    agents = [idle(A100_80[:2], labels=frozenset({"ib"})), idle(A100_80)]
    assert never_fits("a100", requirements, agents) == reason


def test_no_agent_online() -> None:
    assert never_fits("a100", Requirements(), []) == "no agent in pool a100 is online"


def test_a_run_that_could_run_waits_for_gpus_slots_or_the_runs_ahead() -> None:
    busy = AgentView(A100_80, None, None, frozenset(), 4, Capacity(1, (), None, None, frozenset()))
    half = AgentView(A100_80, None, None, frozenset(), 4, Capacity(2, A100_80[:2], None, None, frozenset()))
    full = AgentView(A100_80, None, None, frozenset(), 2, Capacity(0, A100_80, None, None, frozenset()))
    assert waiting_reason("a100", Requirements(gpus=1), [busy, busy], 3) == "all 8 GPUs of pool a100 are busy; " \
                                                                            "3 runs ahead"
    assert waiting_reason("a100", Requirements(gpus=4), [half], 0) == \
        "2 of the 4 GPUs of pool a100 are free, not 4 on one agent"
    assert waiting_reason("a100", Requirements(), [full], 1) == "all 2 slots of pool a100 are busy; 1 run ahead"
    assert waiting_reason("a100", Requirements(gpus=2), [half], 2) == "2 runs ahead"
    assert waiting_reason("a100", Requirements(), [half], 0) == \
        "next in line: an agent of pool a100 takes it at its next poll"


@pytest.mark.parametrize("bad", [{"gpu": 1}, {"gpus": -1}, {"gpus": 1.5}, {"gpus": True}, {"labels": "ib"},
                                 {"labels": [""]}])
def test_bad_requirements_name_the_field(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"field 'requirements\."):
        Requirements.from_json(bad)


def test_requirements_round_trip() -> None:
    asked = Requirements.from_json({"gpus": 2, "gpu_memory_mb": 40960, "labels": ["ib", "ib", " nvme "]})
    assert asked.labels == ("ib", "nvme")
    assert Requirements.from_json(asked.to_json()) == asked
