"""A group leader on a broker that keeps a departed leader (Tansu) sends no LeaveGroup
when it stops; a follower, or any member on another broker, does."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from consumer.settings import Settings
from consumer.source import Source, _noting_leadership


class _Coordinator:
    def __init__(self) -> None:
        self.left = False
        self.generation = 3

    async def _maybe_leave_group(self) -> None:
        self.left = True
        self.reset_generation()

    def reset_generation(self) -> None:
        self.generation = -1


class _Consumer:
    """What aiokafka's stop() does with the group: its coordinator's leave."""

    def __init__(self) -> None:
        self._coordinator = _Coordinator()

    async def stop(self) -> None:
        await self._coordinator._maybe_leave_group()


@pytest.mark.parametrize(
    ("leading", "stays", "leaves"),
    [(True, True, False), (False, True, True), (True, False, True), (False, False, True)],
)
async def test_only_a_leader_on_such_a_broker_stays(
    leading: bool, stays: bool, leaves: bool
) -> None:
    consumer: Any = _Consumer()
    source = Source(Settings(), client_id="c", consumer=consumer)
    source.leading, source.leader_stays = leading, stays
    await source.stop()
    assert consumer._coordinator.left is leaves
    assert consumer._coordinator.generation == -1, "the generation is reset either way"


def test_the_assignor_marks_the_leader_and_keeps_aiokafkas_protocol() -> None:
    consumer: Any = _Consumer()
    source = Source(Settings(), client_id="c", consumer=consumer)
    assignor = _noting_leadership(source)
    assert assignor.name == "roundrobin", "members of one group must agree on the protocol"

    class _Cluster:
        def partitions_for_topic(self, topic: str) -> set[int]:
            return {0, 1}

    assignments = assignor.assign(_Cluster(), {"m1": ConsumerProtocolMemberMetadata(0, ["t"], b"")})
    assert source.leading
    assert sorted(assignments["m1"].assignment[0][1]) == [0, 1]
