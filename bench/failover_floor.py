"""python -m bench.failover_floor [--kill controller|follower] [--down S] [--setting key=value ...]

What a broker kill costs a bare client, so ipam's own share of ``longest_unanswered_after_kill_s``
(``make broker-kills``) can be told from the broker's: three KRaft nodes (tests/apache_kafka.py),
one topic of 8 partitions with replication 3 and ``min.insync.replicas=2``, an idempotent ``acks=all``
producer writing every partition every 50 ms and a consumer reading them (``metadata_max_age_ms``
1000, as ipam's).  The active controller (``--kill controller``) or another node is kill -9'd and
started again ``--down`` seconds later; one JSON line gives the longest gap per partition, for writes
and for reads.  ``--setting`` adds broker properties, to try a fencing setting before recommending it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.apache_kafka import KafkaCluster

TOPIC, PARTITIONS = "failover", 8


class Gaps:
    """The longest time between two successes, per partition."""

    def __init__(self) -> None:
        self.last = dict.fromkeys(range(PARTITIONS), time.monotonic())
        self.longest = dict.fromkeys(range(PARTITIONS), 0.0)

    def saw(self, partition: int) -> None:
        now = time.monotonic()
        self.longest[partition] = max(self.longest[partition], now - self.last[partition])
        self.last[partition] = now

    def reset(self) -> None:
        self.longest = dict.fromkeys(range(PARTITIONS), 0.0)

    def figures(self) -> dict[int, float]:
        return {p: round(s, 2) for p, s in self.longest.items()}


async def write(producer: AIOKafkaProducer, partition: int, gaps: Gaps, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await producer.send_and_wait(TOPIC, b"x", partition=partition)
        gaps.saw(partition)
        await asyncio.sleep(0.05)


async def read(consumer: AIOKafkaConsumer, gaps: Gaps, stop: asyncio.Event) -> None:
    while not stop.is_set():
        for tp in await consumer.getmany(timeout_ms=200):
            gaps.saw(tp.partition)


async def measure(cluster: KafkaCluster, kill: str, down: float) -> dict:
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 3, topic_configs={"min.insync.replicas": "2"})])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all", enable_idempotence=True)
    consumer = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap, group_id=None, enable_auto_commit=False,
                                metadata_max_age_ms=1000, fetch_max_wait_ms=100)
    await producer.start()
    await consumer.start()
    consumer.assign([TopicPartition(TOPIC, p) for p in range(PARTITIONS)])
    writes, reads, stop = Gaps(), Gaps(), asyncio.Event()
    tasks = [asyncio.create_task(write(producer, p, writes, stop)) for p in range(PARTITIONS)]
    tasks.append(asyncio.create_task(read(consumer, reads, stop)))
    try:
        await asyncio.sleep(8)  # settled: leaders elected, clients connected
        writes.reset()
        reads.reset()
        leader = cluster.quorum_leader()
        if leader is None:
            raise SystemExit("no node's log says it became the quorum leader (org.apache.kafka.raft.QuorumState at INFO)")
        victim = next(n for n in cluster.nodes if (n.node_id == leader) == (kill == "controller"))
        cluster.kill_node(victim)
        await asyncio.sleep(down)
        await asyncio.to_thread(cluster.start_node, victim, False)
        await asyncio.sleep(10)
    finally:
        stop.set()
        await asyncio.wait(tasks, timeout=15)
        await producer.stop()
        await consumer.stop()
    return {"killed": victim.node_id, "controller": victim.node_id == leader, "down_s": down,
            "longest_write_gap_s": writes.figures(), "longest_read_gap_s": reads.figures()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kill", choices=("controller", "follower"), default="controller")
    parser.add_argument("--down", type=float, default=5.0, help="seconds the killed node stays down")
    parser.add_argument("--setting", action="append", default=[], help="a broker property, key=value")
    args = parser.parse_args()
    cluster = KafkaCluster(3, settings=tuple(args.setting)).start()
    try:
        result = asyncio.run(measure(cluster, args.kill, args.down))
    finally:
        cluster.destroy()
    print(json.dumps({"settings": args.setting, **result}))


if __name__ == "__main__":
    main()
