"""python -m bench.broker_probe: what a produce and a fetch cost the local broker as a partition grows.

Why ipam trims the local broker's log (devenv/log_trim.py): on Tansu a fetch that returns records
costs broker CPU in proportion to the records (batches) the partition holds.  The probe measures, on
one partition of a fresh broker, the round trip of a produce then a fetch of that record and the
broker's CPU per round trip, fresh, after ``--records`` more single-record batches, and after the
topic was deleted and created again (what the trimmer does).  One JSON line per step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ipam.devenv import LocalBroker

TOPIC = "probe"


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def round_trips(broker: LocalBroker, producer, consumer, label: str, held: int, n: int = 300) -> dict:
    tp = TopicPartition(TOPIC, 0)
    consumer.assign([tp])
    await consumer.seek_to_end(tp)
    cpu, started = cpu_seconds(broker.proc.pid), time.perf_counter()
    for _ in range(n):
        await producer.send_and_wait(TOPIC, b"x" * 300, partition=0)
        while not (await consumer.getmany(tp, timeout_ms=1000)).get(tp):
            pass
    elapsed = time.perf_counter() - started
    return {"scenario": "broker-probe", "step": label, "records_held": held,
            "round_trip_ms": round(elapsed / n * 1000, 2),
            "broker_cpu_ms_per_round_trip": round((cpu_seconds(broker.proc.pid) - cpu) / n * 1000, 2)}


async def probe(records: int) -> list[dict]:
    broker = LocalBroker().start()
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5)
    try:
        await admin.start()
        await admin.create_topics([NewTopic(TOPIC, 1, 1)])
        await producer.start()
        await consumer.start()
        out = [await round_trips(broker, producer, consumer, "fresh", 0)]
        for _ in range(records):  # one batch each, as the API's commands mostly are
            await producer.send_and_wait(TOPIC, b"x" * 300, partition=0)
        out.append(await round_trips(broker, producer, consumer, "grown", records + 300))
        await admin.delete_topics([TOPIC])
        await admin.create_topics([NewTopic(TOPIC, 1, 1)])
        out.append(await round_trips(broker, producer, consumer, "recreated", 0))
        return out
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.close()
        broker.stop()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.broker_probe", description=__doc__)
    ap.add_argument("--records", type=int, default=5000, help="single-record batches added between fresh and grown")
    for line in asyncio.run(probe(ap.parse_args(argv).records)):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
