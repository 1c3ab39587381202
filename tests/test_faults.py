"""The short, seeded fault-injection run CI does (the full one: `make faults`)."""

from __future__ import annotations

import pytest

from . import apache_kafka, netns
from .backends import PrivatePostgres
from .faults.driver import Run


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_seeded_fault_run_has_no_violations():
    pg = PrivatePostgres().start()
    try:
        result = await Run(seed=1001, seconds=12, base_pg=pg).run()
    finally:
        pg.destroy()
    print(result)
    assert result["violations"] == []
    assert result["kills"] >= 1 and result["postgres_restarts"] == 1 and result["broker_restarts"] == 1
    assert result["confirmed"] > 20
    assert result["attempts"] >= result["requests"] and "availability" in result


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_kills_every_8_to_12_seconds_are_ridden_over():
    """The availability scenario, short: two kills under 8 clients (the full one: `make availability`)."""
    pg = PrivatePostgres().start()
    try:
        result = await Run(seed=2001, seconds=25, base_pg=pg, scenario="kills").run()
    finally:
        pg.destroy()
    print(result)
    assert result["violations"] == [] and result["kills"] >= 2
    # the target (99.9 %) is make availability's; here, on a busy CI machine, nothing close to the old 97.9 %
    assert result["ok_2xx"] >= 0.99 * (result["attempts"] - result["refused_4xx"]), result
    # both groups were sampled; a kill leaves a partition unworked for a while (expiry, then the take)
    assert len(result["longest_unworked_s"]) == 2 and max(result["longest_unworked_s"].values()) > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_leader_kill_on_three_apache_kafka_nodes_is_ridden_over():
    """The broker-kills scenario, short: one kill -9 of the busiest of three Kafka nodes (the full one:
    `make broker-kills`), under REST clients and 20 AdmissionReviews/s."""
    why = apache_kafka.unavailable()
    if why is not None:  # a laptop without Java: the rest of the suite runs on the local broker
        pytest.skip(f"three Apache Kafka nodes cannot start here: {why}")
    pg = PrivatePostgres().start()
    try:
        result = await Run(seed=3001, seconds=20, base_pg=pg, scenario="broker-kills").run()
    finally:
        pg.destroy()
    print(result)
    assert result["violations"] == [], result["violations"]
    assert result["broker_kills"] >= 1, result["broker_kill_log"]
    # the target (99.9 %) is make broker-kills'; on a busy CI machine, within a point of it
    assert result["availability"] >= 0.99, result
    assert result["webhook"]["attempts"] > 0 and 0 < result["longest_unanswered_after_kill_s"] < 10, result


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_cuts_from_postgres_and_the_broker_are_ridden_over():
    """The network scenario, short: an allocator and a projector in a namespace, cut off again and again (the full
    one: `make network-faults`)."""
    reason = netns.unavailable() or apache_kafka.unavailable()
    if reason:
        pytest.skip(reason)
    result = await Run(seed=3001, seconds=30, base_pg=None, scenario="network").run()  # its own Postgres
    print(result)
    assert result["violations"] == [] and result["network_faults"] >= 3
    assert result["no_answer"] == 0  # every request answered or refused within its deadline
    # a process cut from the broker leaves its groups after 4 s, so few requests wait past the 10 s deadline
    assert result["ok_2xx"] >= 0.99 * (result["attempts"] - result["refused_4xx"]), result
