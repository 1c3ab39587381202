"""A consumer of ipam's events topic: keeps a MAC -> VM table in a JSON file.

It needs only aiokafka and the published schemas (docs/asyncapi.yaml, docs/events.md), not the
ipam package.  What it shows a consumer must do:

* read every partition in order, and store the next offset of each *in the same file write* as
  the table (one atomic rename), so a restart neither loses nor repeats an event;
* skip a record whose epoch is lower than the highest epoch seen on its partition (a zombie
  allocator's late write) and one whose (epoch, seq) was already applied (a producer retry);
* let a later decision for the same owner replace an earlier one (the owner holds one MAC per pool).

    python examples/mac_table.py --bootstrap 127.0.0.1:9092 --out macs.json            # follow
    python examples/mac_table.py --bootstrap 127.0.0.1:9092 --out macs.json --until-idle 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from aiokafka import AIOKafkaConsumer, TopicPartition


class Table:
    """The file's content: the table, and per partition the next offset and the last (epoch, seq) applied."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.macs: dict[str, dict] = {}
        self.partitions: dict[str, dict] = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
            self.macs, self.partitions = saved["macs"], saved["partitions"]

    def next_offset(self, partition: int) -> int:
        return self.partitions.get(str(partition), {}).get("next_offset", 0)

    def apply(self, partition: int, offset: int, record: dict) -> None:
        seen = self.partitions.setdefault(str(partition), {"next_offset": 0, "epoch": 0, "seq": 0})
        seen["next_offset"] = offset + 1
        epoch, seq = record["epoch"], record["seq"]
        if epoch < seen["epoch"] or (epoch == seen["epoch"] and seq <= seen["seq"]):
            return  # a zombie's late write, or a retry of a record already applied
        seen["epoch"], seen["seq"] = epoch, seq
        event = record["event"]
        kind = event["type"]
        if kind in ("MacLeased", "MacLeaseConfirmed"):
            owner = event["owner"]
            for mac, row in list(self.macs.items()):  # the owner's earlier MAC in this pool, if any
                if row["pool"] == event["pool"] and _same_owner(row, owner) and mac != event["mac"]:
                    del self.macs[mac]
            self.macs[event["mac"]] = {"pool": event["pool"], **owner}
        elif kind == "MacReleased":
            self.macs.pop(event["mac"], None)

    def save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"macs": dict(sorted(self.macs.items())), "partitions": self.partitions}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # table and offsets change together, or not at all


def _same_owner(row: dict, owner: dict) -> bool:
    return all(row[k] == owner[k] for k in ("namespace", "vm", "vm_uid", "interface"))


async def run(bootstrap: str, topic: str, out: str, until_idle: float | None) -> int:
    table = Table(out)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or await _partitions(consumer, topic))
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, table.next_offset(tp.partition))
        idle = 0.0
        while until_idle is None or idle < until_idle:
            batches = await consumer.getmany(timeout_ms=500, max_records=10000)
            if not batches:
                idle += 0.5
                continue
            idle = 0.0
            for tp, msgs in batches.items():
                for msg in msgs:
                    table.apply(tp.partition, msg.offset, json.loads(msg.value))
            table.save()
        table.save()
    finally:
        await consumer.stop()
    return len(table.macs)


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        await consumer._client.force_metadata_update()
        found = consumer.partitions_for_topic(topic)
        if found:
            return found
        await asyncio.sleep(0.2)
    raise SystemExit(f"topic {topic} not found")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--bootstrap", default=os.environ.get("IPAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--topic", default=os.environ.get("IPAM_EVENTS_TOPIC", "ipam.events"))
    parser.add_argument("--out", required=True, help="JSON file holding the table and the offsets")
    parser.add_argument("--until-idle", type=float, default=None, help="stop after this many idle seconds")
    args = parser.parse_args()
    count = asyncio.run(run(args.bootstrap, args.topic, args.out, args.until_idle))
    print(f"{count} MACs in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
