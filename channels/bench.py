"""Adapter throughput against the in-process sandbox carrier, beside the raw aiohttp ceiling
to the same endpoint measured in the same run (machines are noisy: read the ratio); and the
CPU a Twilio create costs its client, against a carrier in another process:
`python -m channels.bench creates http://127.0.0.1:8025` with `hub carrier` running."""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import uvloop

from channels.base import ChannelAdapter, OutboundMessage, ProviderCredentials
from channels.sandbox import CarrierConfig, SandboxCarrier
from channels.twilio_sms import TwilioSmsAdapter

ACCOUNT_SID = "AC" + "be" * 16
AUTH_TOKEN = "bench-auth-token"
SENDGRID_KEY = "SG.bench.key"
BATCH = 500  # messages per send_batch call, as a Sender shard would hand them over

#: Adapters written elsewhere, benched when present: (module, provider, channel).
OPTIONAL_ADAPTERS: tuple[tuple[str, str, str], ...] = (
    ("channels.sendgrid", "sendgrid", "email"),
    ("channels.smtp", "smtp", "email"),
)


async def bench_adapters(n: int = 5000, concurrency: int = 64, rounds: int = 2) -> dict[str, Any]:
    """Messages/s through each adapter and raw requests/s to the same carrier endpoint.
    The raw and Twilio runs alternate `rounds` times and the best of each is kept, so a
    burst of noise from a neighbour does not decide the ratio."""
    config = CarrierConfig(seed=1, callbacks_enabled=False)
    async with SandboxCarrier(config) as carrier:
        creds = ProviderCredentials("twilio", ACCOUNT_SID, AUTH_TOKEN, base_url=carrier.url)
        sms = [OutboundMessage(f"bench-{i}", "sms", f"+1555{i % 10_000_000:07d}",
                               "+15550001000", f"Bench message {i}",
                               status_callback_url="https://hub.example.test/cb")
               for i in range(n)]
        result: dict[str, Any] = {"n": n, "concurrency": concurrency, "rounds": rounds}
        adapter = TwilioSmsAdapter(concurrency=concurrency)
        raw_runs: list[float] = []
        twilio_runs: list[float] = []
        try:
            await adapter.send_batch(creds, sms[:200])  # warm the pool and the client
            for _ in range(max(1, rounds)):
                raw_runs.append(await _raw_twilio(carrier.url, n, concurrency))
                carrier.clear()
                twilio_runs.append(await _timed(n, lambda: _in_batches(adapter, creds, sms)))
                accepted = carrier.stats()["accepted"]["total"]
        finally:
            await adapter.close()
        raw, twilio = max(raw_runs), max(twilio_runs)
        result["raw_aiohttp_req_per_s"] = round(raw, 1)
        result["twilio_sms_msgs_per_s"] = round(twilio, 1)
        result["twilio_sms_ratio"] = round(twilio / raw, 3)
        result["twilio_sms_accepted"] = accepted  # must equal n: the carrier's own count
        result["runs"] = {"raw": [round(r) for r in raw_runs],
                          "twilio_sms": [round(t) for t in twilio_runs]}

        for module, provider, channel in OPTIONAL_ADAPTERS:
            result[provider] = await _optional(module, provider, channel, carrier, n,
                                               concurrency, raw)
        return result


async def _timed(n: int, run: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await run()
    return n / (time.perf_counter() - started)


async def _in_batches(adapter: ChannelAdapter, creds: ProviderCredentials,
                      messages: Sequence[OutboundMessage]) -> None:
    batches = [messages[i:i + BATCH] for i in range(0, len(messages), BATCH)]
    await asyncio.gather(*(adapter.send_batch(creds, b) for b in batches))


async def _raw_twilio(url: str, n: int, concurrency: int) -> float:
    """The ceiling: plain aiohttp form POSTs to Messages.json, same pool size."""
    endpoint = f"{url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    auth = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    slots = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector,
                                     headers={"Authorization": auth}) as session:

        async def post(i: int) -> None:
            async with slots, session.post(endpoint, data={
                    "To": f"+1555{i % 10_000_000:07d}", "From": "+15550001000",
                    "Body": f"Bench message {i}",
                    "StatusCallback": f"https://hub.example.test/cb?message_id=raw-{i}"}) as r:
                await r.read()
                if r.status != 201:
                    raise RuntimeError(f"the carrier answered {r.status}")

        await asyncio.gather(*(post(i) for i in range(200)))  # warm-up
        return await _timed(n, lambda: asyncio.gather(*(post(i) for i in range(n))))


async def _optional(module: str, provider: str, channel: str, carrier: SandboxCarrier,
                    n: int, concurrency: int, raw: float) -> dict[str, Any]:
    """The hook for adapters other engineers own: any class in `module` with
    `provider == <provider>` and `send_batch`, built with no arguments. SendGrid goes to
    the carrier; SMTP to an in-process aiosmtpd sink (skipped when aiosmtpd is missing)."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        return {"skipped": f"{module} not available ({exc})"}
    cls = next((c for c in vars(mod).values() if isinstance(c, type)
                and getattr(c, "provider", None) == provider and hasattr(c, "send_batch")),
               None)
    if cls is None:
        return {"skipped": f"no adapter class with provider={provider!r} in {module}"}
    try:
        adapter = cls()
    except TypeError as exc:
        return {"skipped": f"{cls.__name__}() needs arguments: {exc}"}
    messages = [OutboundMessage(f"bench-{provider}-{i}", "email", f"user{i}@example.com",
                                "news@example.com", f"Body {i}", subject=f"Subject {i}")
                for i in range(n)]
    try:
        if provider == "smtp":
            return await _bench_smtp(adapter, messages, raw)
        creds = ProviderCredentials(provider, "bench", SENDGRID_KEY, base_url=carrier.url)
        carrier.clear()
        rate = await _timed(n, lambda: _in_batches(adapter, creds, messages))
        return {"msgs_per_s": round(rate, 1), "ratio_to_raw_twilio": round(rate / raw, 3),
                "accepted": carrier.stats()["accepted"]["total"]}
    finally:
        await adapter.close()


async def _bench_smtp(adapter: ChannelAdapter, messages: Sequence[OutboundMessage],
                      raw: float) -> dict[str, Any]:
    try:
        from aiosmtpd.smtp import SMTP as SMTPServer
    except ImportError:
        return {"skipped": "aiosmtpd (the test SMTP sink) is not installed"}

    class Sink:
        received = 0

        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            Sink.received += 1
            return "250 OK"

    sink = Sink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTPServer(sink, hostname="bench.sink"),
                                      "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    creds = ProviderCredentials("smtp", "", "", config={
        "host": "127.0.0.1", "port": port, "start_tls": "never"})
    try:
        rate = await _timed(len(messages), lambda: _in_batches(adapter, creds, messages))
    finally:
        server.close()
    return {"msgs_per_s": round(rate, 1), "ratio_to_raw_twilio": round(rate / raw, 3),
            "accepted": sink.received, "note": "one SMTP transaction per message, "
            "the adapter's default connection pool, aiosmtpd sink in the same loop"}


async def bench_creates(carrier_url: str, n: int = 20_000, concurrency: int = 60,
                        ) -> dict[str, Any]:
    """This process's CPU per Twilio create, which is what a busy Sender shard pays for it:
    `n` creates through the SMS adapter, `concurrency` at a time (a shard's bulk share of
    its 64 connections), one message per `send_batch`, after 500 to warm the pool. The
    carrier runs in another process, so its CPU is not counted."""
    creds = ProviderCredentials("twilio", ACCOUNT_SID, AUTH_TOKEN, base_url=carrier_url)
    messages = [OutboundMessage(f"8f0c2b9e-1d3a-4c5b-9e7f-{i:012d}", "sms",
                                f"+1212{2_000_000 + i}", "72003",
                                f"Hi Pat{i}, 20% off this week. Reply STOP to opt out.",
                                status_callback_url="http://127.0.0.1:8000/v1/providers/"
                                                    "twilio/sms/status")
                for i in range(n)]
    adapter = TwilioSmsAdapter()
    slots = asyncio.Semaphore(concurrency)

    async def one(message: OutboundMessage) -> None:
        async with slots:
            (result,) = await adapter.send_batch(creds, [message])
            if not result.ok:
                raise RuntimeError(f"create failed: {result.error}")

    try:
        await asyncio.gather(*(one(m) for m in messages[:500]))
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(m) for m in messages))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await adapter.close()
    return {"n": n, "concurrency": concurrency, "cpu_us_per_create": round(cpu / n * 1e6, 1),
            "creates_per_s": round(n / wall)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["creates"])
    parser.add_argument("carrier_url")
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop",
                        help="a Sender shard runs uvloop (Ray's choice when installed)")
    args = parser.parse_args()
    run = uvloop.run if args.loop == "uvloop" else asyncio.run
    print(json.dumps(run(bench_creates(args.carrier_url, args.n)) | {"loop": args.loop}))
