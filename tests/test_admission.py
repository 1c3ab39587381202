"""The REST listener's admission (ipam.api.app.Admission), on a real aiohttp server with ipam's middleware:
every request answered by its deadline wherever it waits, and new leases refused at once while the event
loop runs late.  The handlers stand for the work a request does; the middleware, the shedding rule and the
loop lateness are the real ones."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from ipam.api.app import make_app
from ipam.api.auth import Authenticator
from ipam.api.http import reply
from ipam.api.openapi import Route

from .harness import make_config


async def _serve(routes: list[Route], **settings):
    cfg = make_config("127.0.0.1:9", "postgresql://127.0.0.1:9/unused", **settings)  # no broker or database is reached
    runner = web.AppRunner(make_app(cfg, Authenticator(cfg), routes))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


async def test_a_request_that_waits_past_its_deadline_is_answered_504_at_the_deadline():
    async def waits_forever(request):
        await asyncio.Event().wait()  # a read queued on a pool that never frees a connection

    runner, url = await _serve([Route("GET", "/slow", waits_forever, "slow", "slow")], request_timeout_seconds=0.5)
    try:
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            async with http.get(url + "/slow") as r:
                body = await r.json()
            took = time.monotonic() - started
        assert r.status == 504 and body["error"]["code"] == "timeout", body
        assert "Idempotency-Key" in body["error"]["message"]
        assert 0.45 <= took < 2.0
    finally:
        await runner.cleanup()


async def test_new_leases_are_refused_while_the_loop_runs_late_and_admitted_again_after():
    async def lease(request):
        return reply({"leased": True}, 201)

    async def hog(request):
        for _ in range(6):  # the loop busy for 1.2 s in slices: every 50 ms tick comes late meanwhile
            time.sleep(0.2)
            await asyncio.sleep(0)
        return reply({"done": True})

    routes = [Route("POST", "/lease", lease, "lease", "lease", sheds=True), Route("POST", "/release", lease, "r", "r"),
              Route("GET", "/hog", hog, "hog", "hog")]
    runner, url = await _serve(routes)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/lease") as r:
                assert r.status == 201  # on time: admitted
            hogging = asyncio.ensure_future(http.get(url + "/hog"))
            await asyncio.sleep(0.7)  # two late ticks at least
            async with http.post(url + "/lease") as r:
                refused = await r.json()
                assert r.status == 429, refused
                assert refused["error"]["code"] == "busy" and int(r.headers["Retry-After"]) >= 1
            async with http.post(url + "/release") as r:
                assert r.status == 201  # releases are never shed
            (await hogging).release()
            await asyncio.sleep(0.3)  # ticks on time again
            async with http.post(url + "/lease") as r:
                assert r.status == 201
    finally:
        await runner.cleanup()
