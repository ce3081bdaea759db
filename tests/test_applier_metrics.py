"""Under `hub serve` the webhook applier is a process of its own, and receipts and keyword
opt-outs are counted there: it writes them in Prometheus's multiprocess files, and the
gateway's `/metrics` serves them with its own, one family per name (a family named twice
makes Prometheus refuse the whole scrape). Before, they were counted in a process nothing
scraped, and the dashboards' receipt panels and the "no receipts" alert saw nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import exposition
from hub.store.suppressions import OPT_OUTS
from hub.webhook_actions import RECEIPTS  # noqa: F401  (the gateway defines it too)

ROOT = Path(__file__).resolve().parent.parent

#: What the applier process counts, written as it writes them (the environment variable
#: set before prometheus_client is imported, as `hub serve` starts it).
APPLIER = textwrap.dedent("""
    from hub.store.suppressions import OPT_OUTS
    from hub.webhook_actions import RECEIPTS
    RECEIPTS.labels("twilio", "delivered").inc(3)
    RECEIPTS.labels("sendgrid", "bounce").inc()
    OPT_OUTS.labels("sms", "opt_out").inc(2)
""")


def test_the_gateway_serves_what_the_applier_process_counted(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", APPLIER], cwd=ROOT, check=True, timeout=120,
                   env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    # The gateway counts in its own process too (an opt-out through the API).
    OPT_OUTS.labels("sms", "api").inc()
    before = {labels: REGISTRY.get_sample_value("hub_receipts_total", dict(
        provider=labels[0], status=labels[1])) or 0.0
        for labels in (("twilio", "delivered"), ("sendgrid", "bounce"))}
    api_opt_outs = REGISTRY.get_sample_value("hub_opt_outs_total",
                                             {"channel": "sms", "source": "api"})

    text = exposition(tmp_path).decode()
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")]
    assert len(helps) == len(set(helps)), "a family is named twice"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("hub_receipts_total", (("provider", "twilio"), ("status", "delivered")))] \
        == before[("twilio", "delivered")] + 3
    assert samples[("hub_receipts_total", (("provider", "sendgrid"), ("status", "bounce")))] \
        == before[("sendgrid", "bounce")] + 1
    assert samples[("hub_opt_outs_total", (("channel", "sms"), ("source", "opt_out")))] >= 2
    assert samples[("hub_opt_outs_total", (("channel", "sms"), ("source", "api")))] \
        == api_opt_outs
    assert "process_cpu_seconds_total" in text  # the gateway's own metrics are still there


def test_without_an_applier_process_the_exposition_is_the_gateways() -> None:
    assert {f.name for f in text_string_to_metric_families(exposition(None).decode())} == \
        {f.name for f in text_string_to_metric_families(generate_latest().decode())}
