"""What the cluster runs, as the watcher sees it: the interfaces and addresses running VMIs report.

An observation of the cluster, not address state (the pipeline alone writes that): ``ipam_store.vmi_interfaces``
and ``vmi_addresses``, replaced on every list and per VMI on each watch event, read by the views
``ipam.mac_collisions`` and ``ipam.ip_drift``.  Apart from ``read_model``, which only reads.
"""

from __future__ import annotations

import asyncpg


async def replace_instances(db: asyncpg.Pool, interfaces: list[tuple], addresses: list[tuple], uid: str | None = None) -> None:
    """What running VMIs report: every VMI (``uid`` None, after a list) or one, replaced."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM ipam_store.vmi_interfaces WHERE $1::text IS NULL OR vmi_uid = $1", uid)
        await conn.execute("DELETE FROM ipam_store.vmi_addresses WHERE $1::text IS NULL OR vmi_uid = $1", uid)
        if interfaces:
            await conn.executemany(
                "INSERT INTO ipam_store.vmi_interfaces (vmi_uid, namespace, name, interface, mac, phase) "
                "VALUES ($1, $2, $3, $4, $5::macaddr, $6) ON CONFLICT (vmi_uid, interface) DO UPDATE "
                "SET mac = EXCLUDED.mac, phase = EXCLUDED.phase, seen_at = now()", interfaces)
        if addresses:
            await conn.executemany(
                "INSERT INTO ipam_store.vmi_addresses (vmi_uid, namespace, name, interface, network, address) "
                "VALUES ($1, $2, $3, $4, $5, $6::inet) ON CONFLICT (vmi_uid, interface, address) DO UPDATE "
                "SET network = EXCLUDED.network, seen_at = now()", addresses)
