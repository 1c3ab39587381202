"""The partition reader on the real broker: what a role may still do with a batch fetched before its
partition was lost (the soak saw the projector fail with aiokafka's "Partition is not assigned")."""

from __future__ import annotations

from ipam import telemetry
from ipam.adapters import kafka, topics


async def test_lag_of_a_partition_lost_after_its_fetch_is_not_recorded_and_does_not_raise(config):
    await topics.ensure_topics(config)
    producer = kafka.producer(config)
    await producer.start()
    try:
        for _ in range(3):
            await producer.send_and_wait(config.events_topic, b"{}", partition=1)
    finally:
        await producer.stop()
    def lag() -> float | None:  # as /metrics reports it
        return telemetry.REGISTRY.get_sample_value("ipam_consumer_lag", {"group": "test-reader", "partition": "1"})

    reader = kafka.PartitionReader(config, config.events_topic)
    await reader.start([0, 1])
    try:
        reader.seek(1, 0)
        batches: dict[int, list] = {}
        for _ in range(50):
            batches |= await reader.fetch(100)
            if len(batches.get(1, [])) == 3:
                break
        assert [m.offset for m in batches[1]] == [0, 1, 2]
        reader.record_lag("test-reader", 1, 1)  # still assigned: lag 3 - 1
        assert lag() == 2
        await reader.assign({0})  # partition 1 lost while its batch is being worked
        reader.record_lag("test-reader", 1, 3)  # raised AssertionError before: the role failed and restarted
        assert lag() == 2  # nothing recorded
    finally:
        await reader.stop()
