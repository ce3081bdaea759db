"""The WebSocket clients of `hub.bench_webhooks`, in processes of their own (no shared GIL
with the gateway or the load generator): each connects its clients over tickets, subscribes
them to `inbox`, and records (message id, receive time) per client until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import Any

import aiohttp


class BenchError(RuntimeError):
    """The benchmark could not run or finish; the message says where to look."""


DATA_ID = '"data":{"id":"'


def client_process(conf: dict[str, Any], conn: Connection) -> None:
    """Entry point of a client process: connect every client of `conf["clients"]`, report
    ready, record (message id, receive time) per client until told to stop."""
    import uvloop

    uvloop.run(_clients(conf, conn))


async def _clients(conf: dict[str, Any], conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    url, key = conf["url"], conf["key"]
    ws_url = url.replace("http", "ws", 1)
    clients: list[tuple[int, str]] = conf["clients"]  # (client id, sub-account id)
    received: dict[int, list[tuple[str, float]]] = {cid: [] for cid, _ in clients}
    closed: dict[int, str] = {}
    other = Counter[str]()
    mono = time.monotonic
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                    headers={"Authorization": f"Bearer {key}"})
    sockets: dict[int, aiohttp.ClientWebSocketResponse] = {}
    gate = asyncio.Semaphore(16)

    async def connect(cid: int, sa: str) -> None:
        async with gate:
            async with session.post(f"{url}/v1/realtime/tickets",
                                    json={"sub_account_id": sa}) as r:
                if r.status != 201:
                    raise BenchError(f"ticket: {r.status} {await r.text()}")
                ticket = (await r.json())["ticket"]
            ws = await session.ws_connect(f"{ws_url}/v1/realtime?ticket={ticket}",
                                          max_msg_size=0, autoping=True)
            hello = json.loads(await ws.receive_str(timeout=30))
            if hello.get("type") != "hello":
                raise BenchError(f"expected hello, got {hello}")
            await ws.send_str(json.dumps({"type": "subscribe", "topics": ["inbox"],
                                          "since": None}))
            while True:
                frame = json.loads(await ws.receive_str(timeout=30))
                if frame.get("type") == "subscribed":
                    break
                if frame.get("type") != "ping":
                    raise BenchError(f"expected subscribed, got {frame}")
            sockets[cid] = ws

    async def read(cid: int, ws: aiohttp.ClientWebSocketResponse) -> None:
        out = received[cid]
        while True:
            msg = await ws.receive()
            t = mono()
            if msg.type is aiohttp.WSMsgType.TEXT:
                data: str = msg.data
                k = data.find(DATA_ID)
                if k >= 0:
                    out.append((data[k + len(DATA_ID):k + len(DATA_ID) + 36], t))
                elif data.startswith('{"type":"ping"'):
                    await ws.send_str('{"type":"pong"}')
                else:
                    frame = json.loads(data)
                    if frame.get("type") == "event":  # a snapshot without an id first
                        out.append((str(frame["data"]["id"]), t))
                    else:
                        other[str(frame.get("type"))] += 1
            else:
                closed[cid] = f"{msg.type.name} {ws.close_code}"
                return

    readers: list[asyncio.Task[None]] = []
    try:
        results = await asyncio.gather(*(connect(cid, sa) for cid, sa in clients),
                                       return_exceptions=True)
        errors = [repr(e) for e in results if isinstance(e, BaseException)]
        readers = [asyncio.create_task(read(cid, ws)) for cid, ws in sockets.items()]
        conn.send(("ready", len(sockets), errors[:5]))
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "count":
                conn.send(("count", sum(len(v) for v in received.values())))
            elif command == "stop":
                break
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for ws in sockets.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)
        await session.close()
    conn.send(("result", received, closed, dict(other)))


class ClientProcs:
    """The client processes, driven over a pipe each."""

    def __init__(self, url: str, key: str, assignment: list[list[tuple[int, str]]]) -> None:
        ctx = get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs = []
        for clients in assignment:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_process, daemon=True,
                               args=({"url": url, "key": key, "clients": clients}, child))
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    async def _recv(self, pipe: Connection, timeout: float) -> Any:
        if not await asyncio.to_thread(pipe.poll, timeout):
            raise BenchError("a WebSocket client process did not answer")
        return pipe.recv()

    async def ready(self, timeout: float = 180) -> tuple[int, list[str]]:
        connected, errors = 0, []
        for pipe in self.pipes:
            _, n, errs = await self._recv(pipe, timeout)
            connected += n
            errors += errs
        return connected, errors

    async def count(self) -> int:
        for pipe in self.pipes:
            pipe.send("count")
        return sum([(await self._recv(pipe, 30))[1] for pipe in self.pipes])

    async def results(self) -> tuple[dict[int, list[tuple[str, float]]], dict[int, str],
                                     dict[str, int]]:
        received: dict[int, list[tuple[str, float]]] = {}
        closed: dict[int, str] = {}
        other: Counter[str] = Counter()
        for pipe in self.pipes:
            pipe.send("stop")
        for pipe in self.pipes:
            _, r, c, o = await self._recv(pipe, 60)
            received.update(r)
            closed.update(c)
            other.update(o)
        return received, closed, dict(other)

    def stop(self) -> None:
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
