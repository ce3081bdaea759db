"""The figures of `hub.bench_webhooks`: the keys of its JSON result line, its targets, and
the report printed for an operator."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

#: Keys of the JSON result line (the smoke test checks them all).
RESULT_FIELDS = (
    "date", "extra_messages", "callbacks", "warmup_callbacks", "concurrency", "gateway_loop",
    "workers", "gateway_req_per_s", "gateway_p50_ms", "gateway_p99_ms", "gateway_errors",
    "bare_req_per_s", "bare_runs_req_per_s", "bare_p50_ms", "bare_p99_ms", "ingest_ratio",
    "ingest_cpu_ratio", "gateway_cpu", "bare_cpu",
    "stored", "applied", "delivered", "apply_drain_seconds",
    "ws_clients", "ws_sub_accounts", "ws_clients_per_sub_account", "ws_client_processes",
    "ws_rate_per_s", "ws_seconds", "ws_events_posted", "ws_post_rate_per_s", "ws_post_errors",
    "ws_post_ack_p50_ms", "ws_post_ack_p99_ms", "ws_applied", "ws_expected_deliveries",
    "ws_deliveries", "ws_missed", "ws_duplicates", "ws_closed", "ws_p50_ms", "ws_p90_ms",
    "ws_p99_ms", "ws_max_ms", "ws_stored_p50_ms", "ws_stored_p99_ms", "ws_apply_start_p50_ms",
    "ws_apply_start_p99_ms", "targets")
TARGETS = {"ingest_ratio": 0.5, "ws_p50_ms": 15.0, "ws_p99_ms": 100.0}



def print_report(r: dict[str, Any], console: Console) -> None:
    lines = [
        f"[bold]Ingest[/bold]: {r['callbacks']:,} signed Twilio status callbacks (after "
        f"{r['warmup_callbacks']:,} warm-up), {r['concurrency']} concurrent, aiohttp; "
        f"{r['extra_messages']:,} older messages in the table",
        f"  gateway ({r['gateway_loop']}, {r['workers']} worker(s), the bare app alike): "
        f"{r['gateway_req_per_s']:,.0f} req/s, ack p50 "
        f"{r['gateway_p50_ms']} ms, p99 {r['gateway_p99_ms']} ms, non-2xx {r['gateway_errors']}",
        f"  bare FastAPI 204: {r['bare_req_per_s']:,.0f} req/s (runs "
        f"{r['bare_runs_req_per_s']}), p50 {r['bare_p50_ms']} ms, p99 {r['bare_p99_ms']} ms",
        f"  gateway / bare = {r['ingest_ratio']:.2f} against the mean of the two baseline runs "
        f"(target ≥ {TARGETS['ingest_ratio']}); by CPU per request "
        f"{r['ingest_cpu_ratio']:.2f}",
        f"  stored {r['stored']:,}, applied {r['applied']:,}, messages delivered "
        f"{r['delivered']:,} (of {r['callbacks'] + r['warmup_callbacks']:,}); applying "
        f"finished {r['apply_drain_seconds']} s after the last ack",
        f"  CPU ms per callback: gateway run {r['gateway_cpu']['cpu_ms_per_request']}, "
        f"bare runs (mean) {r['bare_cpu']['cpu_ms_per_request']}; cores used by other work "
        f"meanwhile: gateway run {r['gateway_cpu']['cores_used']['others']}, bare runs "
        f"{r['bare_cpu']['cores_used']['others']}",
        f"[bold]Webhook → WebSocket[/bold]: {r['ws_clients']} clients = "
        f"{r['ws_sub_accounts']} sub-accounts × {r['ws_clients_per_sub_account']} clients, "
        f"each on `inbox` of its sub-account, in {r['ws_client_processes']} client processes",
        f"  posted {r['ws_events_posted']:,} callbacks at {r['ws_post_rate_per_s']:,.0f}/s "
        f"(asked {r['ws_rate_per_s']:,.0f}/s), ack p50 {r['ws_post_ack_p50_ms']} ms, p99 "
        f"{r['ws_post_ack_p99_ms']} ms, non-2xx {r['ws_post_errors']}, applied "
        f"{r['ws_applied']:,}",
        f"  deliveries {r['ws_deliveries']:,} of {r['ws_expected_deliveries']:,} (missed "
        f"{r['ws_missed']:,}, duplicates {r['ws_duplicates']}, closed {r['ws_closed']})",
        f"  latency POST sent → client received: p50 {r['ws_p50_ms']} ms, p90 "
        f"{r['ws_p90_ms']} ms, p99 {r['ws_p99_ms']} ms, max {r['ws_max_ms']} ms (targets "
        f"≤ {TARGETS['ws_p50_ms']:g} / ≤ {TARGETS['ws_p99_ms']:g} ms)",
        f"  stages: POST → inbox row p50 {r['ws_stored_p50_ms']} ms / p99 "
        f"{r['ws_stored_p99_ms']} ms; POST → apply started p50 {r['ws_apply_start_p50_ms']} "
        f"ms / p99 {r['ws_apply_start_p99_ms']} ms",
        f"  CPU ms per callback: {r['ws_cpu']['cpu_ms_per_request']}; cores used by us "
        f"{r['ws_cpu']['cores_used']['ours']}, by others {r['ws_cpu']['cores_used']['others']}",
        "targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}"
                                for k, v in r["targets"].items()),
    ]
    for line in lines:
        console.print(line, soft_wrap=True)


def report_table(r: dict[str, Any]) -> Table:
    """The figures of record as one table (for `hub bench webhooks`)."""
    table = Table(title=f"webhooks, {r['date']}")
    for col in ("measure", "value", "baseline / target", "met"):
        table.add_column(col)
    met = list(r["targets"].values())
    table.add_row("ingest (signed status callbacks)", f"{r['gateway_req_per_s']:,.0f} req/s",
                  f"bare FastAPI {r['bare_req_per_s']:,.0f} req/s", "")
    table.add_row("ingest ratio (by CPU)", f"{r['ingest_ratio']:.2f} "
                  f"({r['ingest_cpu_ratio']:.2f})", f"≥ {TARGETS['ingest_ratio']}",
                  "yes" if met[0] else "NO")
    table.add_row("ack p50 / p99", f"{r['gateway_p50_ms']} / {r['gateway_p99_ms']} ms",
                  f"bare {r['bare_p50_ms']} / {r['bare_p99_ms']} ms", "")
    table.add_row("stored / applied / delivered", f"{r['stored']:,} / {r['applied']:,} / "
                  f"{r['delivered']:,}", f"{r['callbacks'] + r['warmup_callbacks']:,}",
                  "yes" if met[4] else "NO")
    table.add_row(f"webhook → WebSocket p50 ({r['ws_clients']} clients, "
                  f"{r['ws_post_rate_per_s']:,.0f}/s)", f"{r['ws_p50_ms']} ms",
                  f"≤ {TARGETS['ws_p50_ms']:g} ms", "yes" if met[1] else "NO")
    table.add_row("webhook → WebSocket p99", f"{r['ws_p99_ms']} ms",
                  f"≤ {TARGETS['ws_p99_ms']:g} ms", "yes" if met[2] else "NO")
    table.add_row("deliveries (missed)", f"{r['ws_deliveries']:,} ({r['ws_missed']:,})",
                  f"{r['ws_expected_deliveries']:,}", "yes" if met[3] else "NO")
    return table
