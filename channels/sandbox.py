"""The sandbox carrier: a local stand-in for Twilio's and SendGrid's internet APIs that speaks
their real request and callback formats, misbehaves on request, and logs every accepted send.

Endpoints (one port):

    POST /2010-04-01/Accounts/{AccountSid}/Messages.json     Twilio: send SMS/MMS
    GET  /2010-04-01/Accounts/{AccountSid}/Messages.json     Twilio: list (To, From, DateSent…)
    GET  /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json
    POST /2010-04-01/Accounts/{AccountSid}/Calls.json        Twilio: place a call
    GET  /2010-04-01/Accounts/{AccountSid}/Calls/{Sid}.json
    POST /v3/mail/send                                        SendGrid: send email
    GET|POST /sandbox/config       the CarrierConfig as JSON; POST patches it live
    GET|DELETE /sandbox/requests   the request log (?since=<index>&limit=&channel=); clear it
    GET  /sandbox/stats            counters
    POST /sandbox/inbound          {"from", "to", "body", "media_urls"?}: a signed inbound SMS
    GET  /sandbox/sendgrid/public-key   {"public_key": base64 DER} to verify event batches

Start it in the running loop (`async with SandboxCarrier(config) as carrier`), in a thread
(`run_carrier_in_thread`) or as a process (`serve_forever`, the `hub carrier` command).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from channels.sandbox_callbacks import CallbackSender, EventSigner
from channels.sandbox_config import CarrierConfig, Latency
from channels.sandbox_core import CarrierState, Sent
from channels.sandbox_sendgrid import SendGridApi
from channels.sandbox_twilio import TwilioApi

__all__ = ["CarrierConfig", "CarrierThread", "Latency", "SandboxCarrier",
           "run_carrier_in_thread", "serve_forever"]

log = logging.getLogger(__name__)


class SandboxCarrier:
    def __init__(self, config: CarrierConfig | None = None, *, host: str = "127.0.0.1",
                 port: int = 0,
                 sendgrid_private_key: ec.EllipticCurvePrivateKey | str | None = None) -> None:
        self.host, self.port = host, port
        self.state = CarrierState(config or CarrierConfig())
        self.signer = EventSigner(sendgrid_private_key)
        self.callbacks = CallbackSender(self.state, self.signer)
        self.twilio = TwilioApi(self.state, self.callbacks)
        self.sendgrid = SendGridApi(self.state, self.callbacks)
        self.app = web.Application(client_max_size=32 * 1024 * 1024)
        self.app.add_routes([*self.twilio.routes(), *self.sendgrid.routes(), *self._routes()])
        self._runner: web.AppRunner | None = None
        self.url = ""

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> SandboxCarrier:
        await self.callbacks.start()
        # handler_cancellation: a client that gives up on a hung request frees its handler.
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=2048)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        log.info("sandbox carrier listening on %s", self.url)
        return self

    async def stop(self) -> None:
        self.state.closing.set()
        await self.callbacks.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SandboxCarrier:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- in-process access (what the HTTP control endpoints expose) ------------------------

    @property
    def config(self) -> CarrierConfig:
        return self.state.config

    def configure(self, **changes: Any) -> CarrierConfig:
        """Patch the config with JSON-shaped values, e.g. configure(hang_rate=1.0)."""
        return self.state.configure(changes)

    def requests(self, since: int = 0, limit: int | None = None,
                 channel: str | None = None) -> list[dict[str, Any]]:
        rows: Sequence[Sent] = self.state.log[since:]
        if channel:
            rows = [s for s in rows if s.channel == channel]
        return [s.to_json() for s in rows[:limit]]

    def clear(self) -> None:
        self.state.clear()

    def stats(self) -> dict[str, Any]:
        return {**self.state.stats(), "callbacks_pending": self.callbacks.pending}

    @property
    def sendgrid_public_key(self) -> str:
        return self.signer.public_key

    async def deliver_inbound(self, from_: str, to: str, body: str,
                              media_urls: Sequence[str] = ()) -> dict[str, Any]:
        return await self.twilio.deliver_inbound(from_, to, body, tuple(media_urls))

    # --- control endpoints -----------------------------------------------------------------

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.get("/sandbox/config", self._get_config),
            web.post("/sandbox/config", self._post_config),
            web.get("/sandbox/requests", self._get_requests),
            web.delete("/sandbox/requests", self._delete_requests),
            web.get("/sandbox/stats", self._get_stats),
            web.post("/sandbox/inbound", self._post_inbound),
            web.get("/sandbox/sendgrid/public-key", self._get_public_key),
            web.get("/sandbox/healthz", self._healthz),
        ]

    async def _get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.config.to_json())

    async def _post_config(self, request: web.Request) -> web.Response:
        try:
            patch = await request.json()
            if not isinstance(patch, dict):
                raise ValueError("the body must be a JSON object")
            config = self.state.configure(patch)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(config.to_json())

    async def _get_requests(self, request: web.Request) -> web.Response:
        try:
            since = max(int(request.query.get("since", 0)), 0)
            limit = int(request.query["limit"]) if "limit" in request.query else None
        except ValueError:
            return web.json_response({"error": "since and limit are integers"}, status=400)
        rows = self.requests(since, limit, request.query.get("channel"))
        next_since = rows[-1]["index"] + 1 if rows else since
        return web.json_response({"requests": rows, "next_since": next_since,
                                  "total": len(self.state.log)})

    async def _delete_requests(self, request: web.Request) -> web.Response:
        self.clear()
        return web.Response(status=204)

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _post_inbound(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            from_, to = str(data["from"]), str(data["to"])
            body, media = str(data.get("body", "")), [str(u) for u in data.get("media_urls", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            return web.json_response({"error": 'expected {"from", "to", "body", '
                                               '"media_urls"?}'}, status=400)
        try:
            result = await self.deliver_inbound(from_, to, body, media)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        return web.json_response(result)

    async def _get_public_key(self, request: web.Request) -> web.Response:
        return web.json_response({"public_key": self.signer.public_key})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


class CarrierThread:
    """A carrier on its own event loop in a daemon thread, for sync code and the CLI."""

    def __init__(self, config: CarrierConfig | None, host: str, port: int) -> None:
        self.carrier = SandboxCarrier(config, host=host, port=port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sandbox-carrier", daemon=True)

    @property
    def url(self) -> str:
        return self.carrier.url

    def start(self, timeout: float = 30.0) -> CarrierThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the sandbox carrier did not start")
        if self._error is not None:
            raise RuntimeError("the sandbox carrier failed to start") from self._error
        return self

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.carrier.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.carrier.stop()

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` (sync, or async) on the carrier's loop and return its result."""
        assert self._loop is not None

        async def run() -> Any:
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    def configure(self, **changes: Any) -> CarrierConfig:
        return self.call(lambda: self.carrier.configure(**changes))

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)


def run_carrier_in_thread(config: CarrierConfig | None = None, host: str = "127.0.0.1",
                          port: int = 0) -> CarrierThread:
    return CarrierThread(config, host, port).start()


def serve_forever(host: str = "127.0.0.1", port: int = 8025,
                  config: CarrierConfig | None = None) -> None:
    """Run the carrier until interrupted (the `hub carrier` command)."""

    async def main() -> None:
        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with SandboxCarrier(config, host=host, port=port) as carrier:
            print(f"sandbox carrier on {carrier.url} (SendGrid public key: "
                  f"{carrier.sendgrid_public_key})", flush=True)
            await stop.wait()

    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(
            loop_factory=_loop_factory()) as runner:
        runner.run(main())


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
