"""`hub demo`: the gateway on the embedded defaults, with a seeded demo agency whose API key
and URL land in `$HUB_DATA_DIR/demo.json`."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich.console import Console

from config.settings import Settings
from hub import actions, imports
from hub.context import Hub
from hub.crypto import hash_api_key
from hub.embedded import Services
from hub.store import tenants
from hub.tenancy import Principal

DEMO_AGENCY = "Demo Agency"
#: Two sub-accounts on two continents, so quiet hours and regions differ.
SUB_ACCOUNTS = [
    {"name": "Acme Dental (New York)", "default_region": "US", "timezone": "America/New_York",
     "help_text": "Acme Dental: reply STOP to opt out. Call +1 212 555 0100 for help."},
    {"name": "Bondi Fitness (Sydney)", "default_region": "AU", "timezone": "Australia/Sydney",
     "help_text": "Bondi Fitness: reply STOP to opt out. Help: hello@bondi.example"},
]
FIRST = ["Ava", "Noah", "Mia", "Liam", "Zoe", "Omar", "Ines", "Kenji", "Priya", "Lucas"]
LAST = ["Smith", "Garcia", "Chen", "Okafor", "Muller", "Rossi", "Tanaka", "Singh", "Silva"]
#: Area codes in several US time zones: NY, Chicago, Denver, LA, Anchorage, Honolulu.
US_AREAS = ["212", "312", "303", "213", "907", "808"]


def demo_csv(region: str, n: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    lines = ["phone,email,first_name,last_name,tags"]
    for i in range(n):
        if region == "US":
            phone = f"+1{rnd.choice(US_AREAS)}555{i % 10000:04d}"
        else:
            phone = f"+61412{i % 1000000:06d}"
        first, last = rnd.choice(FIRST), rnd.choice(LAST)
        tags = ";".join(rnd.sample(["vip", "newsletter", "lead", "patient", "member"], 2))
        lines.append(f"{phone},{first.lower()}.{last.lower()}{i}@example.com,{first},{last},{tags}")
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


async def seed(hub: Hub, carrier_url: str, contacts_per_sub_account: int) -> str:
    """A demo agency, two sub-accounts with sandbox-carrier providers, senders and contacts.
    Returns the agency API key."""
    agency, key = await actions.do_create_agency(hub, DEMO_AGENCY)
    key_row = await tenants.find_api_key(hub.pool, hash_api_key(key))
    assert key_row is not None
    principal = Principal(key_row["id"], agency["id"], None)
    for n, spec in enumerate(SUB_ACCOUNTS):
        sa = await actions.do_create_sub_account(hub, principal, spec)
        twilio = await actions.do_create_provider_account(hub, sa["id"], {
            "provider": "twilio", "name": "Sandbox Twilio",
            "account_id": f"AC{n:032x}", "secret": f"demo-auth-token-{n}",
            "base_url": carrier_url, "config": {}})
        sendgrid = await actions.do_create_provider_account(hub, sa["id"], {
            "provider": "sendgrid", "name": "Sandbox SendGrid", "account_id": "demo",
            "secret": f"SG.demo-key-{n}", "base_url": carrier_url, "config": {}})
        numbers = ["+12125550100", "+12125550101"] if spec["default_region"] == "US" \
            else ["+61255501000", "+61255501001"]
        for number in numbers:
            await actions.do_create_sender(hub, sa, {
                "provider_account_id": twilio["id"], "channel": "sms", "kind": "long_code",
                "address": number, "throughput_class": "standard", "mps": None,
                "from_name": None})
        await actions.do_create_sender(hub, sa, {
            "provider_account_id": sendgrid["id"], "channel": "email", "kind": "email",
            "address": f"news@{'acme' if n == 0 else 'bondi'}.example",
            "throughput_class": "standard", "mps": None, "from_name": spec["name"]})
        job = await imports.do_create_import(
            hub, sa["id"], "demo.csv", demo_csv(spec["default_region"], contacts_per_sub_account,
                                                seed=n))
        await imports.run_import(hub, job["id"], sa["id"], sa["default_region"])
    return key


async def _verify(url: str, key: str) -> dict[str, int]:
    """Exercise the API the way a user would, so the demo proves it works."""
    async with httpx.AsyncClient(base_url=url, timeout=10,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        (await client.get("/readyz")).raise_for_status()
        subs = (await client.get("/v1/sub-accounts")).raise_for_status().json()["data"]
        counts = {}
        for sa in subs:
            params: dict[str, str | int] = {"limit": 500}
            counts[sa["name"]] = 0
            while True:
                r = await client.get(f"/v1/sub-accounts/{sa['id']}/contacts", params=params)
                page = r.raise_for_status().json()
                counts[sa["name"]] += len(page["data"])
                if not page["has_more"]:
                    break
                params["cursor"] = page["next_cursor"]
        return counts


async def run_demo(settings: Settings, services: Services, console: Console,
                   exit_when_done: bool) -> None:
    from gateway.app import create_app
    from hub.cli import write_demo_file

    data_dir = settings.data_dir.resolve()
    url = f"http://{settings.host}:{settings.port}"
    carrier_url = f"http://127.0.0.1:{settings.carrier_port}"
    hub = await Hub.open(settings, services.database_url, services.redis_url)
    try:
        info = await _existing_demo(hub, data_dir / "demo.json")
        if info is None:
            with console.status("seeding the demo agency (2 sub-accounts, contacts)…"):
                key = await seed(hub, carrier_url, contacts_per_sub_account=1000)
        else:
            key = info["agency_api_key"]
    finally:
        await hub.close()

    server = uvicorn.Server(uvicorn.Config(
        create_app(settings, services.database_url, services.redis_url), host=settings.host,
        port=settings.port, log_config=None, access_log=False, lifespan="on"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            await serving
            raise RuntimeError("the gateway did not start")
        await asyncio.sleep(0.05)
    counts = await _verify(url, key)
    path = write_demo_file(data_dir, {"url": url, "agency_api_key": key,
                                      "carrier_url": carrier_url})
    console.print(f"[bold green]Switchboard demo is up[/bold green] at {url}")
    console.print(f"  API docs:       {url}/docs")
    for name, n in counts.items():
        console.print(f"  {name}: {n:,} contacts")
    console.print(f"  agency API key: {key}")
    console.print(f"  written to {path}")
    console.print(f"  try: curl -H 'Authorization: Bearer {key}' {url}/v1/sub-accounts",
                  soft_wrap=True)
    print(json.dumps({"url": url, "agency_api_key": key}), flush=True)
    if exit_when_done:
        server.should_exit = True
    else:
        console.print("serving until Ctrl-C")
    await serving
