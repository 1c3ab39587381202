"""The short, seeded fault-injection run CI does (the full one: `make faults`)."""

from __future__ import annotations

import pytest

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
