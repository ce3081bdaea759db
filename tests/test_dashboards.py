"""The monitoring kit in dashboards/: every PromQL expression of the Grafana dashboard and the
alert rules parses (promtool) and names only metrics and labels the hub really exports — read
from the live gateway's /metrics and Ray's metrics export after real traffic (a text sent
through the sandbox carrier with its receipts, a STOP, a forged callback) — the alert rules
pass their unit tests, and the Prometheus and Grafana provisioning files load."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from actors.metrics import Metrics
from channels.sandbox import run_carrier_in_thread
from channels.sandbox_config import CarrierConfig
from config.settings import Settings
from tests.conftest import Tenant, auth
from tests.test_sending import setup_sms, wait_for

DASHBOARDS = Path(__file__).parent.parent / "dashboards"
DASHBOARD = DASHBOARDS / "grafana" / "switchboard-hub.json"
PROVISIONING = DASHBOARDS / "grafana" / "provisioning"
PROMETHEUS = DASHBOARDS / "prometheus"
RAY_SD_FILE = "/tmp/ray/prom_metrics_service_discovery.json"
#: Grafana's interval variables, replaced by what Prometheus would see.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
#: Labels Prometheus itself adds to every scraped series.
TARGET_LABELS = {"instance", "job"}
#: Ray exports an actor metric only once it has been recorded; these record rare events
#: (a shard found dead, a lease taken back, a provider saying slow down), so they are
#: checked against what actors/metrics.py declares (Ray adds the `ray_` prefix, which the
#: live metrics prove below). Every other name must be seen live.
RARE_ACTOR_METRICS = {"ray_hub_actor_restarts_total", "ray_hub_lease_reclaims_total",
                      "ray_hub_provider_throttled_total"}

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian: apt-get install prometheus): the PromQL and "
           "alert-rule checks did not run")


# --- PromQL: expressions and the metric selectors inside them -----------------------------


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    out = []
    for p in dashboard()["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows keep theirs inside
    return out


def dashboard_exprs() -> list[str]:
    exprs = []
    for p in panels():
        for t in p.get("targets", []):
            expr = t["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            exprs.append(expr)
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for g in groups for rule in g["rules"]]


def all_exprs() -> list[str]:
    return dashboard_exprs() + [r["expr"] for r in alert_rules()]


_TOKEN = re.compile(r"""\s+|(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[a-zA-Z]*)
    |(?P<id>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){}\[\],])""", re.X)
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan",
             # aggregations, which may take `by (...)` before their parentheses
             "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk",
             "bottomk", "quantile", "count_values", "limitk", "limit_ratio"}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def selectors(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """({metric name: label names matched on it}, label names grouped by) of a PromQL
    expression that promtool has accepted."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr) if m.lastgroup]
    unread = _TOKEN.sub("", expr)  # every character belongs to some token
    assert not unread, f"cannot read {unread!r} in {expr}"
    names: dict[str, set[str]] = {}
    grouped: set[str] = set()
    i = 0

    def until(close: str, start: int) -> tuple[list[str], int]:
        inner, j = [], start
        while tokens[j][1] != close:
            inner.append(tokens[j][1])
            j += 1
        return inner, j + 1

    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if text == "[":  # a range or subquery: durations only
            _, i = until("]", i + 1)
            continue
        if kind == "id" and text in _GROUPING and nxt == "(":
            labels, i = until(")", i + 2)
            grouped.update(t for t in labels if t != ",")
            continue
        if kind == "id" and text not in _KEYWORDS and text not in _GROUPING and nxt != "(":
            matched = names.setdefault(text, set())
            i += 1
            if nxt == "{":
                inner, i = until("}", i + 1)
                matched.update(inner[k] for k in range(0, len(inner), 4))  # l op "v" ,
            continue
        i += 1
    return names, grouped


def test_selector_scanner_on_a_hard_expression() -> None:
    names, grouped = selectors(
        'histogram_quantile(0.95, sum by (le, provider) (rate(a_bucket{provider!="x",'
        ' kind=~"b|c"}[5m] offset 1h))) / on (provider) group_left (shard) b_total > bool 1e3'
        ' unless sum without (WorkerId) (increase(c:rate5m{q="}"}[1h:5m]))')
    assert names == {"a_bucket": {"provider", "kind"}, "b_total": set(), "c:rate5m": {"q"}}
    assert grouped == {"le", "provider", "shard", "WorkerId"}


def test_dashboard_has_the_panels_operators_need() -> None:
    d = dashboard()
    assert d["schemaVersion"] >= 39  # Grafana 11+
    var = {v["name"]: v for v in d["templating"]["list"]}["datasource"]
    assert var["type"] == "datasource" and var["query"] == "prometheus"
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))
    for p in panels():
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == "${datasource}"
                                    for t in p["targets"]), p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
    titles = " | ".join(p["title"].lower() for p in panels())
    for topic in ("send throughput by channel and outcome", "delivery rate", "latency p95",
                  "lane depth", "time to drain", "throttling", "signature failures",
                  "opt-outs", "websocket connections", "actor restarts", "lease reclaims",
                  "oldest queued message", "webhook 5xx"):
        assert topic in titles, topic


@needs_promtool
def test_every_expression_parses(tmp_path: Path) -> None:
    exprs = all_exprs()
    assert len(exprs) >= 20
    records = [{"record": f"switchboard:check_{i}", "expr": e} for i, e in enumerate(exprs)]
    good = tmp_path / "exprs.yml"
    good.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": records}]}))
    run = subprocess.run(["promtool", "check", "rules", str(good)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(exprs)} rules found" in run.stdout
    # The same check refuses a broken expression (so the pass above means something).
    records.append({"record": "switchboard:broken",
                    "expr": "sum by (channel) (rate(x_total[5m])"})
    bad = tmp_path / "broken.yml"
    bad.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": records}]}))
    run = subprocess.run(["promtool", "check", "rules", str(bad)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode != 0 and "switchboard:broken" not in run.stdout


@needs_promtool
def test_alert_rules_fire_when_they_should() -> None:
    """alerts_test.yml feeds each alert series that must and must not fire it."""
    check = subprocess.run(["promtool", "check", "rules", "alerts.yml"], cwd=PROMETHEUS,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    names = {r["alert"] for r in alert_rules()}
    assert {"SwitchboardQueueAgeNearValidity", "SwitchboardSendFailureRateSpike",
            "SwitchboardDeliveryFailureRateSpike", "SwitchboardWebhook5xx",
            "SwitchboardNoReceipts"} <= names
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "alerts_test.yml").read_text()))
    assert tested == names  # every alert has its unit test
    run = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr


@needs_promtool
def test_prometheus_config_is_valid() -> None:
    run = subprocess.run(["promtool", "check", "config", "prometheus.yml"], cwd=PROMETHEUS,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    jobs = {j["job_name"]: j for j in
            yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]}
    assert jobs["switchboard-gateway"]["metrics_path"] == "/metrics"
    assert jobs["ray"]["file_sd_configs"][0]["files"] == [RAY_SD_FILE]


def test_grafana_provisioning_loads() -> None:
    ds = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    assert ds["apiVersion"] == 1
    [source] = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    dash = yaml.safe_load((PROVISIONING / "dashboards" / "switchboard.yaml").read_text())
    assert dash["apiVersion"] == 1
    [provider] = dash["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    assert source["type"] == dashboard()["templating"]["list"][0]["query"]


# --- the live exports ----------------------------------------------------------------------


def exported(text: str) -> dict[str, set[str]]:
    """{sample name: label names} of a Prometheus text exposition."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def declared_actor_metrics() -> dict[str, set[str]]:
    """What actors/metrics.py registers with Ray, under the names Ray exports."""
    seen: dict[str, set[str]] = {}

    def record(kind: str, name: str, desc: str, tags: tuple[str, ...], **kw: Any) -> Any:
        suffixes = ("_bucket", "_count", "_sum") if kind == "histogram" else ("",)
        for suffix in suffixes:
            seen[f"ray_{name}{suffix}"] = set(tags) | ({"le"} if suffix == "_bucket" else set())

        class Handle:
            def __getattr__(self, _: str) -> Any:
                return lambda *a, **k: None
        return Handle()

    Metrics(record)
    return seen


@pytest.fixture(scope="module")
def live_carrier() -> Iterator[Any]:
    handle = run_carrier_in_thread(CarrierConfig(seed=11))  # callbacks on
    yield handle
    handle.stop()


@pytest.fixture
async def traffic(api: httpx.AsyncClient, tenant: Tenant, settings: Settings,
                  live_carrier: Any) -> AsyncIterator[None]:
    """A text sent and its receipts back, an inbound STOP (an opt-out and its confirmation)
    and a forged status callback (403)."""
    number = "+12125550188"
    state = live_carrier.carrier.state
    sid = state.owner_of(number)
    h = auth(tenant.sa1_key)
    await setup_sms(api, tenant, live_carrier.url, (number,), account=(sid, state.token_for(sid)))
    async with httpx.AsyncClient(base_url=live_carrier.url, timeout=10) as carrier:
        await carrier.post("/sandbox/config", json={
            "inbound_url": f"{settings.base_url}/v1/providers/twilio/sms/inbound"})
        r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                           headers={**h, "Idempotency-Key": "dashboards"},
                           json={"to": "+14155550181", "body": "Your order shipped"})
        assert r.status_code == 202, r.text
        stop = await carrier.post("/sandbox/inbound", json={
            "from": "+14155550182", "to": number, "body": "STOP"})
        assert stop.json()["status"] == 200, stop.text
    forged = await api.post("/v1/providers/twilio/sms/status", content=(
        f"AccountSid={sid}&MessageSid=SM{'0' * 32}&MessageStatus=delivered"),
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 "X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"})
    assert forged.status_code == 403, forged.text
    yield


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels}")


async def test_queue_gauges_read_postgres_at_each_scrape(
    api: httpx.AsyncClient, tenant: Tenant, live_carrier: Any
) -> None:
    h = auth(tenant.sa1_key)
    # One text per 100 s: the rest wait.
    await setup_sms(api, tenant, live_carrier.url, ("+12125550189",), mps=0.01,
                    account=("AC" + "b" * 32, "sandbox-token"))
    before = (await api.get("/metrics")).text
    assert sample(before, "hub_queue_depth", channel="sms") == 0
    assert sample(before, "hub_queue_oldest_age_seconds", channel="sms") == 0
    ids = []
    for n in range(4):
        r = await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages",
                           headers={**h, "Idempotency-Key": f"slow-{n}"},
                           json={"to": f"+1415555017{n}", "body": "wait your turn"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    await asyncio.sleep(2.0)
    waiting = (await api.get("/metrics")).text
    assert 3 <= sample(waiting, "hub_queue_depth", channel="sms") <= 4
    assert sample(waiting, "hub_queue_oldest_age_seconds", channel="sms") >= 2.0
    assert sample(waiting, "hub_queue_depth", channel="email") == 0
    for mid in ids:  # canceled messages leave the queue
        await api.post(f"/v1/sub-accounts/{tenant.sa1}/messages/{mid}/cancel", headers=h)
    after = (await api.get("/metrics")).text
    assert sample(after, "hub_queue_depth", channel="sms") == 0


async def test_expressions_name_only_what_the_hub_exports(
    api: httpx.AsyncClient, traffic: None
) -> None:
    from actors import ray_api

    referenced: dict[str, set[str]] = {}
    grouped: dict[str, set[str]] = {}
    for expr in all_exprs():
        names, by = selectors(expr)
        for name, labels in names.items():
            referenced.setdefault(name, set()).update(labels)
        grouped[expr] = by
    url = ray_api.metrics_url()
    assert url is not None
    live: dict[str, set[str]] = {}
    must_be_live = set(referenced) - RARE_ACTOR_METRICS

    async def scraped() -> bool:
        async with httpx.AsyncClient(timeout=10) as http:
            ray_text = (await http.get(url)).text
        live.clear()
        live.update(exported((await api.get("/metrics")).text))
        for name, labels in exported(ray_text).items():
            live.setdefault(name, set()).update(labels)
        return must_be_live <= set(live)

    try:
        await wait_for(scraped, timeout=90, every=2.0)
    except AssertionError:
        pytest.fail(f"not exported after real traffic: {sorted(must_be_live - set(live))}")

    declared = declared_actor_metrics()
    # Ray exports a declared actor metric under ray_<name>, with its tags as labels.
    for name in ("ray_hub_messages_total", "ray_hub_provider_latency_seconds_bucket",
                 "ray_hub_lane_depth"):
        assert declared[name] <= live[name], name
    known = {**declared, **live}
    for name, labels in referenced.items():
        assert name in known, f"{name} is not exported by the hub"
        assert labels <= known[name], f"{name} has no label {labels - known[name]}"
    for expr, by in grouped.items():
        names, _ = selectors(expr)
        available = set().union(TARGET_LABELS, *(known[n] for n in names))
        assert by <= available, f"grouping by {by - available} in {expr}"
    # The traffic moved the series the panels show.
    assert any(n == "hub_opt_outs_total" for n in live)
    assert "ray_hub_messages_total" in live and "hub_receipts_total" in live
