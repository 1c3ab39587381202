"""Input Postgres cannot store (U+0000 in text) and command ids past their limit are refused where they
enter, and if they reach the pipeline anyway they are skipped as poison: the partition goes on, its
sequence intact (no fence, no re-decision)."""

from __future__ import annotations

import json

import asyncpg
import msgspec
from aiokafka import AIOKafkaProducer

from ipam.adapters.kafka import partition_for
from ipam.adapters.postgres.codecs import connect
from ipam.adapters.postgres.migrations import migrate
from ipam.adapters.postgres.projection import Projection
from ipam.domain.events import MacLeased, PoolCreated
from ipam.domain.kinds import Owner
from ipam.domain.topic_records import EventRecord

from .harness import eventually

_encode = msgspec.json.Encoder().encode


def _record(seq: int, event) -> bytes:
    return _encode(EventRecord(partition=0, epoch=1, seq=seq, source_offset=seq - 1, last=True, event=event))


async def test_a_record_postgres_refuses_is_skipped_and_the_sequence_goes_on(database):
    await migrate(database)
    conn = await connect(database)
    try:
        await conn.execute("INSERT INTO ipam_store.partitions (partition) VALUES (0)")
        owner = Owner(namespace="team", vm="ok", vm_uid="u1", interface="eth0")
        batch = list(enumerate([
            _record(1, PoolCreated(command_id="c1", at=1, name="p", range="02:00:00:00:00:00-02:00:00:00:00:ff")),
            _record(2, MacLeased(command_id="c2", at=2, pool="p", mac="02:00:00:00:00:01",
                                 owner=Owner(namespace="team", vm="a\x00b", vm_uid="u0", interface="eth0"))),
            _record(3, MacLeased(command_id="c3", at=3, pool="p", mac="02:00:00:00:00:02", owner=owner)),
            json.dumps({"partition": 0, "epoch": 1, "seq": 4, "source_offset": 3, "last": True,
                        "event": {"type": "FromTheFuture"}}).encode(),
            _record(5, MacLeased(command_id="c5", at=5, pool="p", mac="02:00:00:00:00:03",
                                 owner=Owner(namespace="team", vm="ok2", vm_uid="u2", interface="eth0"))),
        ]))
        result = await Projection(lambda name: 0).apply(conn, 0, 0, batch)
        assert (result.next_offset, result.applied, result.poison) == (5, 3, 2)
        assert [offset for offset, _raw, _why in result.dead_letters] == [1, 3]
        assert "refused by Postgres" in result.dead_letters[0][2]
        assert await conn.fetchval("SELECT count(*) FROM ipam.mac_leases") == 2
        row = await conn.fetchrow("SELECT events_offset, applied_epoch, applied_seq FROM ipam_store.partitions")
        assert tuple(row) == (5, 1, 5)
        notes = await conn.fetch("SELECT \"offset\", seq FROM ipam_store.ledger WHERE type = 'PoisonEvent' ORDER BY 1")
        assert [tuple(n) for n in notes] == [(1, 2), (3, 4)]
    finally:
        await conn.close()


async def test_bad_text_is_refused_at_the_api(service, http):
    async with http.post(service.url + "/v1/pools", json={"name": "np", "range": "02:80:00:00:00:00-02:80:00:00:00:ff",
                                                          "default": True}) as r:
        assert r.status == 201
    good = {"namespace": "team", "vm": "v", "vm_uid": "u", "interface": "eth0"}
    async with http.post(service.url + "/v1/mac-leases", json={**good, "vm": "v\x00"}) as r:
        assert r.status == 400 and (await r.json())["error"]["field"] == "vm"
    async with http.get(service.url + "/v1/mac-leases", params={"pool": "\x00"}) as r:
        assert r.status == 400 and (await r.json())["error"]["field"] == "pool"
    async with http.post(service.url + "/v1/mac-leases", json=good, headers={"Idempotency-Key": "k" * 129}) as r:
        assert r.status == 400 and (await r.json())["error"]["field"] == "Idempotency-Key"
    async with http.post(service.url + "/v1/networks", json={"name": "n", "subnets": [{"cidr": "10.0.0.0/24",
                                                                                      "exclude": ["10.0.0.1\x00"]}]}) as r:
        assert r.status == 400 and (await r.json())["error"]["field"] == "subnets[0].exclude[0]"


async def test_commands_the_api_would_refuse_do_not_stall_their_partition(service, http):
    async with http.post(service.url + "/v1/pools", json={"name": "np", "range": "02:81:00:00:00:00-02:81:00:00:00:ff",
                                                          "default": True}) as r:
        assert r.status == 201
    partition = partition_for("np", service.cfg.partitions)
    owner = {"namespace": "team", "vm": "x\u0000y", "vm_uid": "u", "interface": "eth0"}
    producer = AIOKafkaProducer(bootstrap_servers=service.cfg.kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for command in ({"type": "LeaseMac", "command_id": "nul-1", "at": 1, "pool": "np", "owner": owner},
                        {"type": "LeaseMac", "command_id": "z" * 129, "at": 1, "pool": "np", "owner": {**owner, "vm": "y"}},
                        {"type": "LeaseMac", "command_id": "nul\u00002", "at": 1, "pool": "np", "owner": {**owner, "vm": "z"}}):
            await producer.send_and_wait(service.cfg.commands_topic, json.dumps(command).encode(), key=b"np", partition=partition)
    finally:
        await producer.stop()
    async with http.post(service.url + "/v1/mac-leases", json={**owner, "vm": "after"}) as r:
        assert r.status == 201, await r.text()
    conn = await asyncpg.connect(service.cfg.database_url)
    try:
        rejected = await eventually(lambda: conn.fetch(
            "SELECT command_id, detail FROM ipam.history WHERE what = 'rejected' AND partition = $1 ORDER BY id", partition))
        assert [r["command_id"] for r in rejected][:1] == ["nul-1"] and "owner.vm contains U+0000" in rejected[0]["detail"]
        assert any(r["command_id"].startswith("undecodable:") for r in rejected)
        epoch = await conn.fetchval("SELECT epoch FROM ipam.partitions WHERE partition = $1", partition)
        assert epoch == 1  # nothing was fenced or decided again
    finally:
        await conn.close()


async def test_a_command_the_decider_fails_on_is_rejected_and_the_partition_goes_on(service, http, monkeypatch):
    """Fault injection of a decider bug: one command makes ``decide`` raise.  It is rejected (500 `internal`),
    dead-lettered, and the next command on the same partition is decided at once; nothing is fenced."""
    from ipam.roles import allocator

    real = allocator.decide

    def buggy(state, command):
        if getattr(command, "owner", None) is not None and command.owner.vm == "trips-the-bug":
            raise ZeroDivisionError("injected")
        return real(state, command)

    monkeypatch.setattr(allocator, "decide", buggy)
    async with http.post(service.url + "/v1/pools", json={"name": "bug", "range": "02:82:00:00:00:00-02:82:00:00:00:ff",
                                                          "default": True}) as r:
        assert r.status == 201
    owner = {"namespace": "team", "vm_uid": "u", "interface": "eth0"}
    async with http.post(service.url + "/v1/mac-leases", json={**owner, "vm": "trips-the-bug"}) as r:
        assert r.status == 500 and (await r.json())["error"]["code"] == "internal"
    async with http.post(service.url + "/v1/mac-leases", json={**owner, "vm": "fine"}) as r:
        assert r.status == 201, await r.text()
    conn = await asyncpg.connect(service.cfg.database_url)
    try:
        partition = partition_for("bug", service.cfg.partitions)
        assert await conn.fetchval("SELECT epoch FROM ipam.partitions WHERE partition = $1", partition) == 1
    finally:
        await conn.close()
