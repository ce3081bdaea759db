"""`hub demo`: the whole hub on its embedded defaults, end to end. It starts PostgreSQL, Redis,
Ray, the sandbox carrier and the gateway; seeds a demo agency (two sub-accounts, senders and a
few thousand contacts in several time zones); launches an SMS and an email campaign through
the REST API; shows their progress live from the realtime feed; has the carrier's contacts
reply (one of them with STOP); prints a summary; and serves until Ctrl-C (or, with --exit,
stops once nothing more can be sent now)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import socket
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import websockets
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from config.settings import Settings
from hub import actions, imports, users
from hub.compliance import KEYWORD_REPLIES
from hub.context import Hub
from hub.crypto import hash_api_key
from hub.embedded import Services
from hub.errors import Conflict
from hub.store import tenants
from hub.tenancy import Principal

DEMO_AGENCY = "Demo Agency"
CONTACTS_PER_SUB_ACCOUNT = 2500
#: Two sub-accounts on two continents, so regions and quiet hours differ.
SUB_ACCOUNTS = [
    {"name": "Acme Dental (New York)", "default_region": "US", "timezone": "America/New_York",
     "help_text": "Acme Dental: reply STOP to opt out. Call +1 212 555 0100 for help."},
    {"name": "Bondi Fitness (Sydney)", "default_region": "AU", "timezone": "Australia/Sydney",
     "help_text": "Bondi Fitness: reply STOP to opt out. Help: hello@bondi.example"},
]
DEMO_NAMES = {spec["name"] for spec in SUB_ACCOUNTS}
#: The provider accounts the demo seeds: pointed at this run's carrier on every run.
DEMO_PROVIDERS = ("Sandbox Twilio", "Sandbox SendGrid")
FIRST = ["Ava", "Noah", "Mia", "Liam", "Zoe", "Omar", "Ines", "Kenji", "Priya", "Lucas"]
LAST = ["Smith", "Garcia", "Chen", "Okafor", "Muller", "Rossi", "Tanaka", "Singh", "Silva"]
#: US area codes across the country's zones: New York, Chicago, Denver, Los Angeles,
#: Anchorage, Honolulu; the contact's zone comes from the number.
US_AREAS = ["212", "312", "303", "213", "907", "808"]
AU_ZONES = ["Australia/Sydney", "Australia/Perth", "Australia/Adelaide", ""]
REPLIES = ["Thanks!", "What time do you open?", "STOP", "Yes please", "HELP"]
#: One person per role for the pages at /app (a development-only password, printed).
DEMO_PASSWORD = "switchboard-demo"
DEMO_USERS = [("admin@demo.example", "Ada Admin", "admin", (0, 1)),
              ("marketer@demo.example", "Max Marketer", "marketer", (0, 1)),
              ("agent@demo.example", "Alex Agent", "agent", (0,))]


def demo_csv(region: str, n: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    lines = ["phone,email,first_name,last_name,timezone,tags"]
    for i in range(n):
        if region == "US":
            phone, tz = f"+1{rnd.choice(US_AREAS)}555{i % 10000:04d}", ""
        else:
            phone, tz = f"+61412{i % 1000000:06d}", rnd.choice(AU_ZONES)
        first, last = rnd.choice(FIRST), rnd.choice(LAST)
        tags = ";".join(rnd.sample(["vip", "newsletter", "lead", "patient", "member"], 2))
        lines.append(f"{phone},{first.lower()}.{last.lower()}{i}@example.com,{first},{last},"
                     f"{tz},{tags}")
    return ("\n".join(lines) + "\n").encode()


def _read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


async def _existing_demo(hub: Hub, path: Path) -> dict[str, Any] | None:
    try:
        info = _read_json(path)
        row = await tenants.find_api_key(hub.pool, hash_api_key(info["agency_api_key"]))
    except (OSError, ValueError, KeyError):
        return None
    return info if row is not None and row["sub_account_id"] is None else None


#: The sandbox behaves as Twilio with its default opt-out handling: it blocks a number that
#: texted STOP and refuses the hub's own confirmation (21610); Twilio answers the keywords
#: itself. So the demo's accounts leave keyword replies to the provider.
TWILIO_CONFIG = {KEYWORD_REPLIES: "provider"}


async def seed(hub: Hub, carrier_url: str, contacts_per_sub_account: int) -> str:
    """A demo agency, two sub-accounts with sandbox-carrier providers, senders and contacts.
    Returns the agency API key."""
    agency, key = await actions.do_create_agency(hub, DEMO_AGENCY)
    key_row = await tenants.find_api_key(hub.pool, hash_api_key(key))
    assert key_row is not None
    principal = Principal(key_row["id"], agency["id"], None)
    sub_accounts = []
    for n, spec in enumerate(SUB_ACCOUNTS):
        sa = await actions.do_create_sub_account(hub, principal, spec)
        sub_accounts.append(sa["id"])
        twilio = await actions.do_create_provider_account(hub, sa["id"], {
            "provider": "twilio", "name": "Sandbox Twilio",
            "account_id": f"AC{n:032x}", "secret": f"demo-auth-token-{n}",
            "base_url": carrier_url, "config": TWILIO_CONFIG})
        sendgrid = await actions.do_create_provider_account(hub, sa["id"], {
            "provider": "sendgrid", "name": "Sandbox SendGrid", "account_id": "demo",
            "secret": f"SG.demo-key-{n}", "base_url": carrier_url, "config": {}})
        codes = ["+12125550100", "+12125550101"] if spec["default_region"] == "US" \
            else ["+61255501000", "+61255501001"]
        for number in codes:
            await actions.do_create_sender(hub, sa, {
                "provider_account_id": twilio["id"], "channel": "sms", "kind": "toll_free",
                "address": number, "throughput_class": "demo", "mps": 100.0,
                "from_name": None})
        await actions.do_create_sender(hub, sa, {
            "provider_account_id": sendgrid["id"], "channel": "email", "kind": "email",
            "address": f"news@{'acme' if n == 0 else 'bondi'}.example",
            "throughput_class": "standard", "mps": 200.0, "from_name": spec["name"]})
        job = await imports.do_create_import(
            hub, sa["id"], "demo.csv", demo_csv(spec["default_region"], contacts_per_sub_account,
                                                seed=n))
        await imports.run_import(hub, job["id"], sa["id"], sa["default_region"])
    await seed_users(hub, agency["id"], sub_accounts)
    return key


async def seed_users(hub: Hub, agency_id: Any, sub_accounts: list[Any]) -> None:
    for email, name, role, which in DEMO_USERS:
        with contextlib.suppress(Conflict):  # kept from an earlier demo run
            await users.do_create_user(hub, agency_id, email, DEMO_PASSWORD, name,
                                       {sub_accounts[i]: users.Role(role) for i in which})


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


class DemoClient:
    """The demo drives the hub the way a user's program would: REST and the feed."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.http = httpx.AsyncClient(base_url=url, timeout=30,
                                      headers={"Authorization": f"Bearer {key}"})

    async def get(self, path: str, **params: Any) -> Any:
        r = await self.http.get(path, params=params)
        r.raise_for_status()
        return r.json()

    async def post(self, path: str, body: Any = None) -> Any:
        r = await self.http.post(path, json=body)
        r.raise_for_status()
        return r.json()

    async def sub_accounts(self) -> list[dict[str, Any]]:
        """The demo's own sub-accounts: ones a user added to the agency are left alone."""
        result: list[dict[str, Any]] = (await self.get("/v1/sub-accounts",
                                                       limit=100))["data"]
        return sorted((s for s in result if s["name"] in DEMO_NAMES), key=lambda s: s["name"])

    async def launch(self, sa: str, channel: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": f"Demo {channel} campaign", "channel": channel,
            "audience": {"tags_any": ["vip", "newsletter", "lead", "member", "patient"]}}
        if channel == "email":
            body.update(subject="{{first_name}}, our spring offers are here",
                        body="Hi {{first_name | default: \"there\"}}, 20% off all week.")
        else:
            body.update(body="Hi {{first_name}}! 20% off this week only. Reply STOP to opt out.")
        c = await self.post(f"/v1/sub-accounts/{sa}/campaigns", body)
        launched: dict[str, Any] = await self.post(
            f"/v1/sub-accounts/{sa}/campaigns/{c['id']}/launch")
        return launched

    async def cancel_earlier_runs(self, sub_accounts: list[str]) -> int:
        """Cancel the demo campaigns an earlier run of this folder left live (one stopped
        mid-run, or still waiting for a time zone's window): launched again beside them,
        their contacts would get each text twice. Campaigns a user made are left alone."""
        cancelled = 0
        names = {f"Demo {channel} campaign" for channel in ("sms", "email")}
        for sa in sub_accounts:
            for status in ("scheduled", "running", "paused"):
                page = await self.get(f"/v1/sub-accounts/{sa}/campaigns", status=status,
                                      limit=100)
                for c in page["data"]:
                    if c["name"] in names:
                        await self.post(f"/v1/sub-accounts/{sa}/campaigns/{c['id']}/cancel")
                        cancelled += 1
        return cancelled

    async def follow(self, sa: str, on_event: Any, stop: asyncio.Event) -> None:
        """Follow one sub-account's feed, resuming with `since` after any drop."""
        since: int | None = None
        ws_url = self.url.replace("http://", "ws://") + "/v1/realtime"
        while not stop.is_set():
            try:
                ticket = (await self.post("/v1/realtime/tickets", {"sub_account_id": sa}))["ticket"]
                async with websockets.connect(f"{ws_url}?ticket={ticket}") as ws:
                    await ws.send(json.dumps({"type": "subscribe", "topics": ["*"],
                                              "since": since}))
                    while not stop.is_set():
                        try:
                            frame = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
                        except TimeoutError:
                            continue
                        if frame.get("type") == "ping":
                            await ws.send(json.dumps({"type": "pong"}))
                        elif frame.get("type") == "event":
                            since = frame["seq"]
                            on_event(sa, frame)
            except (OSError, websockets.WebSocketException, httpx.HTTPError):
                await asyncio.sleep(0.5)

    async def close(self) -> None:
        await self.http.aclose()


async def run_demo(settings: Settings, services: Services, console: Console,
                   exit_when_done: bool) -> None:
    from channels.sandbox import run_carrier_in_thread
    from channels.sandbox_config import CarrierConfig, Latency
    from gateway.app import SERVER_OPTIONS, create_app
    from hub.cli import until_started, write_demo_file
    from hub.provider_settings import PUBLIC_KEY

    data_dir = settings.data_dir.resolve()
    url = f"http://{settings.host}:{settings.port}"
    carrier = run_carrier_in_thread(CarrierConfig(
        seed=42, latency=Latency(kind="uniform", min=0.05, max=0.4), undelivered_rate=0.03,
        failed_rate=0.01, inbound_url=f"{url}/v1/providers/twilio/sms/inbound",
        honor_opt_out=True), port=_free_port(settings.carrier_port))
    hub = await Hub.open(settings, services.database_url, services.redis_url)
    try:
        info = await _existing_demo(hub, data_dir / "demo.json")
        if info is None:
            with console.status("seeding the demo agency (2 sub-accounts, "
                                f"{2 * CONTACTS_PER_SUB_ACCOUNT:,} contacts)…"):
                key = await seed(hub, carrier.url, CONTACTS_PER_SUB_ACCOUNT)
        else:
            key = info["agency_api_key"]
        # The carrier may have moved to another port since the last run, and it signs
        # SendGrid event batches with a key of its own run. Only the demo's own accounts
        # are touched: ones a user added in this folder keep their settings.
        ours = await hub.pool.fetch(
            """SELECT p.id, p.provider FROM provider_accounts p
               JOIN sub_accounts s ON s.id = p.sub_account_id
               JOIN api_keys k ON k.agency_id = s.agency_id AND k.key_hash = $1
               WHERE s.name = ANY($2::text[]) AND p.name = ANY($3::text[])
               ORDER BY p.created_at""",
            hash_api_key(key), sorted(DEMO_NAMES), list(DEMO_PROVIDERS))
        twilio = [r["id"] for r in ours if r["provider"] == "twilio"]
        sendgrid = [r["id"] for r in ours if r["provider"] == "sendgrid"]
        await hub.pool.execute("UPDATE provider_accounts SET base_url = $1 "
                               "WHERE id = ANY($2::uuid[])", carrier.url, twilio + sendgrid)
        await hub.pool.execute(  # a demo seeded before keyword replies were configurable
            "UPDATE provider_accounts SET config = config || $1::jsonb "
            "WHERE id = ANY($2::uuid[])", TWILIO_CONFIG, twilio)
        await hub.pool.execute(
            """UPDATE provider_accounts SET config = config || jsonb_build_object($1::text,
                   $2::text) WHERE id = ANY($3::uuid[])""", PUBLIC_KEY,
            carrier.carrier.sendgrid_public_key, sendgrid)
        # One event webhook for the carrier, as for one SendGrid account: the hub accepts
        # a batch for the other sub-account's messages because the key is the same.
        account = sendgrid[0]
    finally:
        await hub.close()
    async with httpx.AsyncClient(base_url=carrier.url) as c:
        r = await c.post("/sandbox/config", json={
            "sendgrid_event_url": f"{url}/v1/providers/sendgrid/events?account={account}"})
        r.raise_for_status()

    server = uvicorn.Server(uvicorn.Config(
        create_app(settings, services.database_url, services.redis_url), host=settings.host,
        port=settings.port, access_log=False, **SERVER_OPTIONS))
    serving = asyncio.create_task(server.serve())
    with console.status("starting the gateway and the Ray actors…"):
        await until_started(server, serving)
    path = write_demo_file(data_dir, {"url": url, "agency_api_key": key,
                                      "carrier_url": carrier.url})
    client = DemoClient(url, key)
    try:
        await _run_scenario(client, carrier, console)
        console.print(f"[bold green]Switchboard demo is up[/bold green] at {url}")
        console.print(f"  API docs:       {url}/docs")
        console.print(f"  sandbox carrier {carrier.url} (its log: {carrier.url}/sandbox/requests)")
        console.print(f"  agency API key: {key}")
        console.print(f"  pages:          {url}/app — sign in as "
                      + ", ".join(email for email, *_ in DEMO_USERS)
                      + f" (password {DEMO_PASSWORD})", soft_wrap=True)
        console.print(f"  written to {path}")
        console.print(f"  try: curl -H 'Authorization: Bearer {key}' {url}/v1/sub-accounts",
                      soft_wrap=True)
        print(json.dumps({"url": url, "agency_api_key": key, "carrier_url": carrier.url}),
              flush=True)
        if exit_when_done:
            server.should_exit = True
        else:
            console.print("serving until Ctrl-C")
        await serving
    finally:
        await client.close()
        carrier.stop()


async def _run_scenario(client: DemoClient, carrier: Any, console: Console) -> None:
    subs = await client.sub_accounts()
    stale = await client.cancel_earlier_runs([sa["id"] for sa in subs])
    if stale:
        console.print(f"cancelled {stale} demo campaign{'s' if stale > 1 else ''} an earlier "
                      "run left live, so that no contact gets this run's texts twice")
    campaigns: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for sa in subs:
        for channel in ("sms", "email"):
            campaigns.append((sa, await client.launch(sa["id"], channel)))
    inbound: list[dict[str, Any]] = []
    opt_outs: list[dict[str, Any]] = []

    def on_event(sa: str, frame: dict[str, Any]) -> None:
        data = frame.get("data") or {}
        if frame["event"] == "message.created" and data.get("direction") == "inbound":
            inbound.append(data)
        elif frame["event"] == "suppression.created":
            opt_outs.append(data)

    stop = asyncio.Event()
    followers = [asyncio.create_task(client.follow(sa["id"], on_event, stop)) for sa in subs]
    progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20),
                        MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
                        console=console)
    console.print("live from the realtime feed and /stats — ✓ sent, ✓✓ delivered, ✗ failed, "
                  "⏸ waiting for the contact's local sending window")
    tasks = {c["id"]: progress.add_task(f"{sa['name'].split(' (')[0]:<13} {c['channel']:<5}",
                                        total=c["recipients_total"] or 1, detail="")
             for sa, c in campaigns}
    replied = False
    with progress:
        for tick in range(1800):  # at most 15 minutes
            finished = 0
            for sa, c in campaigns:
                s = await client.get(f"/v1/sub-accounts/{sa['id']}/campaigns/{c['id']}/stats")
                counts = s["counts"]
                moved = sum(v for k, v in counts.items() if k not in ("pending", "queued"))
                delivered = counts.get("delivered", 0) + counts.get("read", 0)
                progress.update(tasks[c["id"]], completed=moved, detail=(
                    f"✓{counts.get('sent', 0) + delivered:,} ✓✓{delivered:,} "
                    f"✗{counts.get('failed', 0) + counts.get('undelivered', 0):,} "
                    f"⏸{counts.get('pending', 0):,}"))
                idle = counts.get("queued", 0) + counts.get("sending", 0) == 0 and \
                    s["current_rate_per_s"] == 0
                # Idle once something left, or after 15 s (everyone may be in quiet hours).
                if idle and (moved > 0 or tick > 30):
                    finished += 1
            if not replied and any(t.completed for t in progress.tasks):
                await _replies(client, carrier, subs)  # once the first messages are out
                replied = True
            if finished == len(campaigns) and replied:
                break
            await asyncio.sleep(0.5)
    await asyncio.sleep(2.0)  # let the last replies and receipts arrive
    stop.set()
    await asyncio.gather(*followers, return_exceptions=True)
    await _summary(client, console, campaigns, inbound, opt_outs)


async def _replies(client: DemoClient, carrier: Any, subs: list[dict[str, Any]]) -> None:
    """A few contacts text back, as people do; one sends STOP."""
    async with httpx.AsyncClient(base_url=carrier.url, timeout=10) as http:
        for sa in subs:
            senders = (await client.get(f"/v1/sub-accounts/{sa['id']}/senders",
                                        channel="sms"))["data"]
            contacts = (await client.get(f"/v1/sub-accounts/{sa['id']}/contacts",
                                         limit=len(REPLIES)))["data"]
            for contact, body in zip(contacts, REPLIES, strict=False):
                with contextlib.suppress(httpx.HTTPError):
                    await http.post("/sandbox/inbound", json={
                        "from": contact["phone"], "to": senders[0]["address"], "body": body})


async def _summary(client: DemoClient, console: Console,
                   campaigns: list[tuple[dict[str, Any], dict[str, Any]]],
                   inbound: list[dict[str, Any]], opt_outs: list[dict[str, Any]]) -> None:
    console.rule("summary")
    for sa, c in campaigns:
        s = await client.get(f"/v1/sub-accounts/{sa['id']}/campaigns/{c['id']}/stats")
        counts = ", ".join(f"{k} {v:,}" for k, v in sorted(s["counts"].items()))
        console.print(f"{sa['name']} · {c['channel']}: {counts} ({s['status']})")
        if s["status"] == "paused":
            console.print(f"   [yellow]{s.get('paused_reason') or 'paused'}[/yellow]; "
                          f"resume it with POST .../campaigns/{c['id']}/resume")
        elif s["counts"].get("pending"):
            console.print(f"   {s['counts']['pending']:,} wait for 08:00–21:00 in their own "
                          f"time zone (ETA {s['eta'] or 'n/a'})")
        for e in s["top_errors"][:3]:
            console.print(f"   error {e['code']}: {e['count']:,}")
    sources = collections.Counter(o.get("source") or "other" for o in opt_outs)
    console.print(f"inbound replies seen on the live feed: {len(inbound)}; addresses "
                  f"suppressed: {len(opt_outs)} ("
                  + ", ".join(f"{n} {source}" for source, n in sorted(sources.items())) + ")")
