"""The `hub` command: migrate, serve, demo, the sandbox carrier and admin tasks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import typer
import uvicorn
import uvloop
from rich.console import Console

from config.logging import setup_logging
from config.settings import Settings
from hub import db
from hub.embedded import Services, start_services
from hub.errors import HubError
from hub.users import Role

app = typer.Typer(help="Switchboard messaging hub.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
admin = typer.Typer(help="Administrative tasks.", no_args_is_help=True)
app.add_typer(admin, name="admin")
bench = typer.Typer(help="Benchmarks (ratios against a same-run baseline).",
                    no_args_is_help=True)
app.add_typer(bench, name="bench")
console = Console(stderr=True)
log = logging.getLogger("hub")

#: The environment `hub serve` and `hub demo` read, for their --help (typer shows each
#: paragraph as a line); every setting is in the README, "Running it for real".
ENVIRONMENT = """[bold]Environment[/bold] (all settings: README, "Running it for real"):

  HUB_HOST, HUB_PORT: where the gateway listens (127.0.0.1, 8000); --host/--port win

  HUB_DATA_DIR: where the embedded servers keep their data (./.hub)

  DATABASE_URL, REDIS_URL: external servers instead of the embedded ones

  RAY_ADDRESS: a Ray cluster to join (unset: a private local Ray); HUB_ACTORS=false: none

  HUB_PUBLIC_URL: the URL providers post webhooks to (http://HUB_HOST:HUB_PORT)

  HUB_ENVIRONMENT, HUB_SECRET_KEY: production refuses the development secret

  HUB_CARRIER_PORT: the sandbox carrier's port (8025)

  HUB_LOG_LEVEL, HUB_LOG_JSON: log level (INFO), one JSON object a line (false)"""

Host = Annotated[str | None, typer.Option(
    "--host", show_default=False, help="interface to listen on (default: HUB_HOST, else "
    "127.0.0.1)")]
Port = Annotated[int | None, typer.Option(
    "--port", min=1, max=65535, show_default=False,
    help="port to listen on (default: HUB_PORT, else 8000)")]


def _settings(host: str | None = None, port: int | None = None) -> Settings:
    """The settings from the environment; --host and --port, when given, take precedence."""
    given: dict[str, Any] = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    try:
        settings = Settings(**given)
    except ValueError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc
    setup_logging(settings.log_level, settings.log_json)
    return settings


def _services(settings: Settings) -> Services:
    with console.status("starting PostgreSQL and Redis…"):
        services = start_services(settings)
        asyncio.run(db.migrate(services.database_url))
    return services


@app.command()
def migrate() -> None:
    """Apply pending database migrations (also done at every start)."""
    settings = _settings()
    services = start_services(settings)
    try:
        applied = asyncio.run(db.migrate(services.database_url))
        console.print(f"applied: {', '.join(applied) or 'nothing (up to date)'}")
    finally:
        services.stop()


def _port_free(host: str, port: int) -> bool:
    """Whether the gateway can listen on the port. With SO_REUSEADDR, as uvicorn binds:
    the connections of a hub just stopped linger in TIME-WAIT for a minute, and would
    otherwise keep it from starting again while carriers' callbacks fail."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


async def _applier(services: Services, metrics_dir: Path) -> None:
    """The webhook applier (hub/applier.py) in a process of its own, restarted if it dies,
    stopped with the gateway. It writes its metrics (receipts, keyword opt-outs) in
    Prometheus's multiprocess files in `metrics_dir`, which the gateway's `/metrics` serves;
    a restarted applier's counters add to its predecessors'."""
    env = {**os.environ, "DATABASE_URL": services.database_url,
           "REDIS_URL": services.redis_url, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
           "HUB_PARENT_PID": str(os.getpid())}
    while True:
        # Its own session: Ctrl-C reaches the gateway, which then stops it.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub.applier", env=env, stdin=subprocess.DEVNULL,
            start_new_session=True)
        try:
            code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
        log.warning("the webhook applier exited; restarting it", extra={"code": code})
        await asyncio.sleep(1.0)


async def _serve(settings: Settings, services: Services, metrics_dir: Path,
                 on_started: object = None) -> None:
    from gateway.app import SERVER_OPTIONS, create_app

    application = create_app(settings, services.database_url, services.redis_url,
                             apply_webhooks=False, applier_metrics=metrics_dir)
    config = uvicorn.Config(application, host=settings.host, port=settings.port,
                            access_log=False, **SERVER_OPTIONS)
    server = uvicorn.Server(config)
    applier = asyncio.create_task(_applier(services, metrics_dir))
    task = asyncio.create_task(server.serve())
    try:
        await until_started(server, task)
        if on_started is not None:
            await on_started()  # type: ignore[operator]
        await task
    finally:
        applier.cancel()
        await asyncio.gather(applier, return_exceptions=True)


async def until_started(server: uvicorn.Server, serving: asyncio.Task[None]) -> None:
    """Wait until uvicorn listens (RuntimeError if it stopped first), then give SIGTERM back
    to uvicorn: `ray.init`, in the app's start-up, replaces uvicorn's handler with Ray's
    (`sys.exit`), which dropped WebSocket clients without a close frame. With uvicorn's,
    SIGTERM shuts down as Ctrl-C does: clients closed with 1012, then the signal re-raised
    into `_stop_on_sigterm`'s handler once the server is down."""
    while not server.started:
        if serving.done():
            await serving
            raise RuntimeError("the gateway did not start")
        await asyncio.sleep(0.05)
    signal.signal(signal.SIGTERM, server.handle_exit)


def _stop_on_sigterm() -> None:
    """SIGTERM (a supervisor's stop) ends the hub as Ctrl-C does, through its clean-up.
    Left at the default, it killed the process where uvicorn re-raises it after its own
    shutdown, before the embedded servers and the applier were stopped."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


@app.command(epilog=ENVIRONMENT)
def serve(host: Host = None, port: Port = None) -> None:
    """Run the gateway (REST, webhooks, realtime) and the webhook applier beside it. SIGTERM
    and Ctrl-C stop it cleanly (realtime clients are closed with 1012)."""
    _stop_on_sigterm()
    settings = _settings(host=host, port=port)
    if not _port_free(settings.host, settings.port):
        console.print(f"[red]port {settings.port} on {settings.host} is in use[/red]; use "
                      "--port (or HUB_PORT) to pick a free one")
        raise typer.Exit(1)
    services = _services(settings)
    # The applier's metrics: in the data folder, one folder per port (replicas may share a
    # folder); one a killed hub left behind is cleared by the next start on its port.
    metrics_dir = settings.data_dir / "run" / f"applier-metrics-{settings.port}"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    try:  # uvicorn's own loop choice is skipped here
        uvloop.run(_serve(settings, services, metrics_dir))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM, once the gateway has shut down
        pass
    finally:
        services.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)  # here: an interrupt cancels twice


@app.command(epilog=ENVIRONMENT)
def demo(
    exit_when_done: Annotated[bool, typer.Option("--exit", help="exit once the demo is "
                                                 "seeded and verified (for scripts)")] = False,
    host: Host = None,
    port: Port = None,
) -> None:
    """Start everything on the embedded defaults, seed a demo agency, and serve."""
    from hub.demo import run_demo

    _stop_on_sigterm()
    settings = _settings(host=host, port=port)
    if not _port_free(settings.host, settings.port):
        console.print(f"[red]port {settings.port} on {settings.host} is in use[/red]; stop "
                      "the other process or use --port (or HUB_PORT)")
        raise typer.Exit(1)
    services = _services(settings)
    try:
        uvloop.run(run_demo(settings, services, console, exit_when_done))
    except KeyboardInterrupt:
        pass
    finally:
        services.stop()


@app.command()
def carrier(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
) -> None:
    """Run the sandbox carrier (Twilio and SendGrid stand-in) on HUB_CARRIER_PORT."""
    from channels.sandbox import serve_forever

    settings = _settings()
    serve_forever(host, settings.carrier_port)


@admin.command("create-agency")
def create_agency(name: str) -> None:
    """Create an agency and print its id and first API key as JSON."""
    from hub.actions import do_create_agency
    from hub.context import Hub

    settings = _settings()
    services = _services(settings)

    async def run() -> dict[str, str]:
        hub = await Hub.open(settings, services.database_url, services.redis_url)
        try:
            agency, key = await do_create_agency(hub, name)
        finally:
            await hub.close()
        return {"agency_id": str(agency["id"]), "api_key": key}

    try:
        print(json.dumps(asyncio.run(run())))
    except HubError as exc:
        console.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(1) from exc
    finally:
        services.stop()


def _grants(values: list[str]) -> dict[UUID, Role]:
    """`--grant SUB_ACCOUNT_ID:ROLE` options, checked as they are parsed (before the password
    prompt): one role per sub-account."""
    grants: dict[UUID, Role] = {}
    for value in values:
        sa, _, role = value.partition(":")
        try:
            sa_id, grants_role = UUID(sa), Role(role)
        except ValueError as exc:
            raise typer.BadParameter(f"{value!r}: use SUB_ACCOUNT_ID:ROLE with ROLE admin, "
                                     "marketer or agent") from exc
        if sa_id in grants:
            raise typer.BadParameter(f"sub-account {sa_id} is granted twice; give it one role")
        grants[sa_id] = grants_role
    return grants


def _checked_grants(values: list[str]) -> list[str]:
    _grants(values)
    return values


def _agency_id(value: str) -> str:
    try:
        UUID(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not an agency id (a UUID)") from exc
    return value


@admin.command("create-user")
def create_user(
    email: str,
    agency: Annotated[str, typer.Option(help="the agency id the user belongs to",
                                        callback=_agency_id)],
    grant: Annotated[list[str], typer.Option(
        help="SUB_ACCOUNT_ID:ROLE with ROLE admin, marketer or agent (repeatable)",
        callback=_checked_grants)],
    name: Annotated[str, typer.Option(help="display name")] = "",
    password: Annotated[str, typer.Option(
        prompt=True, hide_input=True, confirmation_prompt=True, envvar="HUB_NEW_PASSWORD",
        help="at least 10 characters (prompted when not given)")] = "",
) -> None:
    """Create a user who signs in to the pages at /app, and print it as JSON."""
    from hub.context import Hub
    from hub.users import do_create_user

    agency_id, grants = UUID(agency), _grants(grant)
    settings = _settings()
    services = _services(settings)

    async def run() -> dict[str, object]:
        hub = await Hub.open(settings, services.database_url, services.redis_url)
        try:
            user = await do_create_user(hub, agency_id, email, password, name, grants)
        finally:
            await hub.close()
        return {"user_id": str(user["id"]), "email": user["email"],
                "grants": {str(k): v.value for k, v in grants.items()}}

    try:
        print(json.dumps(asyncio.run(run())))
    except HubError as exc:
        console.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(1) from exc
    finally:
        services.stop()


def _positive(value: float) -> float:
    """Rates and durations: a usage error, not a division by zero minutes later."""
    if value <= 0:
        raise typer.BadParameter(f"{value} must be more than 0")
    return value


@bench.command("import")
def bench_import_cmd(
    rows: Annotated[int, typer.Option(min=1, help="CSV rows to import")] = 100_000,
) -> None:
    """Time a contact CSV import against a raw COPY of the same rows."""
    from hub.bench import bench_import

    settings = _settings()
    services = _services(settings)
    try:
        with console.status(f"importing {rows:,} rows…") as status:
            result = asyncio.run(bench_import(settings, services, rows,
                                              lambda step: status.update(f"{step}…")))
    finally:
        services.stop()
    console.print(f"import: {result['rows']:,.0f} rows in {result['import_seconds']:.2f} s = "
                  f"{result['import_rows_per_s']:,.0f} rows/s "
                  f"(created {result['created']:,.0f}, errors {result['errors']:,.0f})")
    console.print(f"  validated in {result['workers']:.0f} processes; event-loop lag meanwhile "
                  f"p50 / p99 / max {result['loop_lag_p50_ms']:.1f} / "
                  f"{result['loop_lag_p99_ms']:.1f} / {result['loop_lag_max_ms']:.1f} ms")
    console.print(f"  in one process: {result['one_process_import_seconds']:.2f} s; lag "
                  f"{result['one_process_loop_lag_p50_ms']:.1f} / "
                  f"{result['one_process_loop_lag_p99_ms']:.1f} / "
                  f"{result['one_process_loop_lag_max_ms']:.1f} ms")
    console.print(f"  parse+validate alone: {result['parse_validate_seconds']:.2f} s")
    console.print(f"  raw COPY baseline: {result['raw_copy_rows_per_s']:,.0f} rows/s; "
                  f"import/raw = {result['import_vs_raw_copy']:.2f}")
    print(json.dumps(result))


@bench.command("adapters")
def bench_adapters_cmd(
    messages: Annotated[int, typer.Option(min=1, help="messages per adapter and round")] = 5000,
    concurrency: Annotated[int, typer.Option(min=1, help="connections to the carrier")] = 64,
    rounds: Annotated[int, typer.Option(
        min=1, help="raw/Twilio rounds; the best of each is kept")] = 2,
) -> None:
    """Each channel adapter against the in-process sandbox carrier, beside raw aiohttp."""
    from rich.table import Table

    from channels.bench import bench_adapters

    _settings()
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd: a line per command
    with console.status(f"sending {messages:,} messages per adapter…"):
        result = asyncio.run(bench_adapters(messages, concurrency, rounds))
    raw = result["raw_aiohttp_req_per_s"]
    table = Table(title=f"{messages:,} messages, {concurrency} connections, best of {rounds}")
    for column in ("adapter", "msgs/s", "÷ raw aiohttp", "accepted"):
        table.add_column(column, justify="left" if column == "adapter" else "right")
    table.add_row("raw aiohttp (Twilio form POST)", f"{raw:,.0f}", "1.00", "")
    table.add_row("Twilio SMS", f"{result['twilio_sms_msgs_per_s']:,.0f}",
                  f"{result['twilio_sms_ratio']:.2f}", f"{result['twilio_sms_accepted']:,}")
    for name in ("sendgrid", "smtp"):
        row = result.get(name) or {}
        if "skipped" in row:
            table.add_row(name, "skipped", "", row["skipped"])
        else:
            table.add_row(name, f"{row['msgs_per_s']:,.0f}", f"{row['ratio_to_raw_twilio']:.2f}",
                          f"{row['accepted']:,}")
    console.print(table)
    print(json.dumps(result))


@bench.command("campaign")
def bench_campaign_cmd(
    recipients: Annotated[int, typer.Option(min=1, help="contacts in the audience")] = 100_000,
    reply_latency: Annotated[bool, typer.Option(
        "--reply-latency", help="also time agent replies sent during the bulk run")] = False,
    replies: Annotated[int, typer.Option(
        min=1, help="agent replies with --reply-latency")] = 100,
    reply_every: Annotated[float, typer.Option(
        min=0, help="seconds between agent replies")] = 0.2,
    senders: Annotated[int, typer.Option(min=1, help="sender numbers in the pool")] = 10,
    mps: Annotated[float, typer.Option(callback=_positive,
                                       help="messages per second of each sender")] = 1000.0,
) -> None:
    """A bulk SMS campaign end to end, beside the raw HTTP ceiling to the same carrier.

    REST launch, Ray shards, the carrier in its own process: send rate, completion time and
    the hub's peak memory; with --reply-latency, agent-reply latency under that load."""
    from hub.bench_campaign import BenchError, CampaignBench

    settings = _settings()
    plan = CampaignBench(recipients=recipients, senders=senders, mps=mps,
                         replies=replies if reply_latency else 0, reply_every_s=reply_every)
    try:
        r = plan.run(settings, console)
    except BenchError as exc:
        console.print(f"[red]benchmark failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    lines = [
        f"[bold]{r['recipients']:,} recipients[/bold], {r['senders']} senders × "
        f"{r['sender_mps']:,.0f} MPS, {r['concurrency']} connections to the carrier",
        f"  carrier accepted {r['carrier_accepted']:,} of {r['expected_sends']:,}; hub counts "
        f"sent {r['hub_sent']:,}; campaign {r['campaign_status']}",
        f"  send rate {r['send_rate_per_s']:,.0f}/s (launch → last accepted "
        f"{r['send_seconds']:.1f} s; launch request {r['launch_seconds']:.1f} s; first send "
        f"after {r['first_send_seconds']} s); steady {r['steady_rate_per_s']:,.0f}/s",
        f"  completion {r['completion_seconds']:.1f} s (launched_at → completed_at)",
        f"  raw ceiling {r['raw_ceiling_req_per_s']:,.0f} req/s (runs "
        f"{r['raw_runs_req_per_s']}); send rate / raw = {r['ratio_to_raw']:.2f}, "
        f"steady / raw = {r['steady_ratio_to_raw']:.2f}",
        f"  hub memory: idle {r['idle_rss_mb']:,} MB, peak {r['peak_rss_mb']:,} MB RSS over "
        f"{r['hub_processes']} processes {r['peak_rss_by_group_mb']}, peak PSS "
        f"{r['peak_pss_mb']:,} MB",
    ]
    if r.get("replies"):
        lines.append(f"  agent replies: {r['replies_found']}/{r['replies']} found "
                     f"({r['replies_during_bulk']} posted while the bulk ran); p50 "
                     f"{r['reply_p50_ms']} ms, p95 {r['reply_p95_ms']} ms, p99 "
                     f"{r['reply_p99_ms']} ms, max {r['reply_max_ms']} ms")
    for line in lines:
        console.print(line, soft_wrap=True)
    print(json.dumps(r))


@bench.command("webhooks")
def bench_webhooks_cmd(
    callbacks: Annotated[int, typer.Option(min=1, help="timed signed status callbacks")] = 5_000,
    concurrency: Annotated[int, typer.Option(min=1, help="requests in flight for ingest")] = 64,
    clients: Annotated[int, typer.Option(min=1, help="WebSocket clients")] = 500,
    rate: Annotated[float, typer.Option(callback=_positive,
                                        help="callbacks per second, WebSocket run")] = 1000.0,
    seconds: Annotated[float, typer.Option(callback=_positive,
                                           help="length of the WebSocket run")] = 10.0,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn workers of the gateway, and of "
                                         "the bare app alike")] = 1,
) -> None:
    """Signed Twilio status callbacks ingested per second beside a bare FastAPI endpoint,
    and webhook → WebSocket latency with many connected clients."""
    from hub.bench_webhooks import WebhookBench
    from hub.bench_webhooks_clients import BenchError
    from hub.bench_webhooks_report import report_table

    settings = _settings()
    plan = WebhookBench(callbacks=callbacks, concurrency=concurrency, clients=clients,
                        rate=rate, seconds=seconds, workers=workers)
    try:
        r = plan.run(settings, console)
    except BenchError as exc:
        console.print(f"[red]benchmark failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    console.print(report_table(r))
    print(json.dumps(r))


def write_demo_file(data_dir: Path, info: dict[str, str]) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "demo.json"
    path.write_text(json.dumps(info, indent=2) + "\n")
    with contextlib.suppress(OSError):
        path.chmod(0o600)  # it holds an API key
    return path


if __name__ == "__main__":
    app()
