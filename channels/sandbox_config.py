"""The sandbox carrier's knobs: one frozen dataclass, given at start and patched at runtime
through `POST /sandbox/config` (JSON), so tests and benchmarks can change behaviour live."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

#: z-score of the 99th percentile of a standard normal distribution.
_Z99 = 2.3263478740408408


@dataclass(frozen=True, slots=True)
class Latency:
    """How long a provider takes between two steps of a message (sent → delivered, …).

    `fixed` waits `seconds`; `uniform` draws from [min, max]; `lognormal` has the given
    median and 99th percentile, the usual shape of network and carrier delays."""

    kind: Literal["fixed", "uniform", "lognormal"] = "fixed"
    seconds: float = 0.05
    min: float = 0.0
    max: float = 0.0
    median: float = 0.0
    p99: float = 0.0

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.seconds
        if self.kind == "uniform":
            return rng.uniform(self.min, self.max)
        sigma = math.log(self.p99 / self.median) / _Z99
        return rng.lognormvariate(math.log(self.median), sigma)

    @classmethod
    def from_json(cls, value: object) -> Latency:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return cls(kind="fixed", seconds=float(value))
        if not isinstance(value, Mapping):
            raise ValueError("latency must be a number of seconds or an object")
        unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown latency keys: {sorted(unknown)}")
        kind = value.get("kind", "fixed")
        latency = cls(kind=kind, **{k: float(v) for k, v in value.items() if k != "kind"})
        latency.check()
        return latency

    def check(self) -> None:
        if self.kind == "fixed" and self.seconds < 0:
            raise ValueError("latency.seconds must be >= 0")
        if self.kind == "uniform" and not 0 <= self.min <= self.max:
            raise ValueError("latency needs 0 <= min <= max")
        if self.kind == "lognormal" and not 0 < self.median < self.p99:
            raise ValueError("latency needs 0 < median < p99")
        if self.kind not in ("fixed", "uniform", "lognormal"):
            raise ValueError("latency.kind is fixed, uniform or lognormal")


@dataclass(frozen=True, slots=True)
class CarrierConfig:
    """Everything the carrier can be told to do. Rates are probabilities in [0, 1], drawn
    per request (API faults) or per message (outcomes, callback quirks, replies)."""

    seed: int | None = None
    latency: Latency = field(default_factory=Latency)

    # Callback delivery (Twilio's default connection policy: 5 s connect, 15 s read, 1 retry).
    callbacks_enabled: bool = True
    callback_retries: int = 1
    callback_retry_delay_s: float = 0.5
    callback_connect_timeout_s: float = 5.0
    callback_read_timeout_s: float = 15.0

    # Outcomes. Delivered is what remains after undelivered and failed. Email maps
    # undelivered to a bounce and failed to a drop; voice adds busy / no-answer.
    undelivered_rate: float = 0.0
    failed_rate: float = 0.0
    undelivered_codes: tuple[int, ...] = (30003, 30005, 30006, 30007)
    failed_codes: tuple[int, ...] = (30008,)

    # REST API faults (Twilio and SendGrid alike). A hung request is accepted and logged.
    rate_limit_rate: float = 0.0
    retry_after_s: float = 1.0
    server_error_rate: float = 0.0
    server_error_statuses: tuple[int, ...] = (500, 503)
    hang_rate: float = 0.0
    hang_max_s: float = 600.0
    #: To number → Twilio error code answered synchronously (e.g. {"+15005550009": 21614}).
    reject_to: dict[str, int] = field(default_factory=dict)

    # Callback quirks.
    duplicate_rate: float = 0.0
    out_of_order_rate: float = 0.0

    # Sender throughput: messages beyond a sender's MPS wait in its queue (0 = unlimited).
    mps: float = 0.0
    mps_by_sender: dict[str, float] = field(default_factory=dict)
    queue_limit: int = 0
    #: "429": refuse with HTTP 429 / 20429; "30022": accept, then fail with 30022.
    queue_overflow: Literal["429", "30022"] = "429"

    # Two-way SMS.
    inbound_url: str | None = None
    reply_rate: float = 0.0
    reply_bodies: tuple[str, ...] = ("STOP", "Yes", "Thanks!", "HELP", "Who is this?")
    honor_opt_out: bool = True

    # Accounts: empty means any SID/token pair is accepted (and signs its own callbacks).
    accounts: dict[str, str] = field(default_factory=dict, repr=False)
    default_account_sid: str = "AC" + "0" * 32
    default_auth_token: str = field(default="sandbox-auth-token", repr=False)

    # Voice.
    busy_rate: float = 0.0
    no_answer_rate: float = 0.0
    machine_rate: float = 0.0
    #: To number → what AMD reports for it, instead of drawing machine_rate.
    answered_by: dict[str, str] = field(default_factory=dict)
    call_duration_s: float = 1.0

    # Email (SendGrid).
    sendgrid_event_url: str | None = None
    sendgrid_api_keys: tuple[str, ...] = field(default=(), repr=False)
    sendgrid_batch_interval_s: float = 0.1
    sendgrid_batch_size: int = 500
    open_rate: float = 0.0
    click_rate: float = 0.0
    spamreport_rate: float = 0.0

    def updated(self, patch: Mapping[str, Any]) -> CarrierConfig:
        """A copy with `patch` (JSON-shaped) applied; ValueError names the bad key."""
        current = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for key, value in patch.items():
            if key not in current:
                raise ValueError(f"unknown config key: {key}")
            try:
                changes[key] = _coerce(key, current[key], value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{key}: {exc}") from None
        config = dataclasses.replace(self, **changes)
        config.check()
        return config

    def check(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_rate") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} must be within [0, 1]")
        if self.undelivered_rate + self.failed_rate > 1.0:
            raise ValueError("undelivered_rate + failed_rate must not exceed 1")
        if self.busy_rate + self.no_answer_rate + self.failed_rate > 1.0:
            raise ValueError("busy_rate + no_answer_rate + failed_rate must not exceed 1")
        if self.queue_overflow not in ("429", "30022"):
            raise ValueError("queue_overflow is '429' or '30022'")
        if self.mps < 0 or any(v <= 0 for v in self.mps_by_sender.values()):
            raise ValueError("mps must be >= 0 and per-sender mps > 0")
        if self.callback_retries < 0 or self.queue_limit < 0:
            raise ValueError("callback_retries and queue_limit must be >= 0")
        if not self.server_error_statuses or not all(
                500 <= s <= 599 for s in self.server_error_statuses):
            raise ValueError("server_error_statuses must be 5xx codes")
        if not set(self.answered_by.values()) <= ANSWERED_BY:
            raise ValueError(f"answered_by values are {', '.join(sorted(ANSWERED_BY))}")
        if self.sendgrid_batch_size < 1:
            raise ValueError("sendgrid_batch_size must be >= 1")
        self.latency.check()

    def to_json(self) -> dict[str, Any]:
        """The config as JSON, without the account tokens and API keys."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}
        out["latency"] = dataclasses.asdict(self.latency)
        out["accounts"] = sorted(self.accounts)
        out["sendgrid_api_keys"] = len(self.sendgrid_api_keys)
        return out


#: Twilio's AnsweredBy values.
ANSWERED_BY = frozenset({"human", "unknown", "machine_start", "machine_end_beep",
                         "machine_end_silence", "machine_end_other", "fax"})

_OPTIONAL: dict[str, type] = {"seed": int, "inbound_url": str, "sendgrid_event_url": str}


def _coerce(key: str, current: object, value: object) -> object:
    if key in _OPTIONAL:
        return None if value is None else _OPTIONAL[key](value)
    if isinstance(current, Latency):
        return Latency.from_json(value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise TypeError("expected true or false")
        return value
    if isinstance(current, int | float) and isinstance(value, bool):
        raise TypeError("expected a number")
    if isinstance(current, float):
        return float(value)  # type: ignore[arg-type]
    if isinstance(current, int):
        return int(value)  # type: ignore[call-overload]
    if isinstance(current, tuple):
        if not isinstance(value, list | tuple):
            raise TypeError("expected a list")
        kind = type(current[0]) if current else str
        return tuple(kind(v) for v in value)
    if isinstance(current, dict):
        if not isinstance(value, Mapping):
            raise TypeError("expected an object")
        kind = float if key == "mps_by_sender" else int if key == "reject_to" else str
        return {str(k): kind(v) for k, v in value.items()}
    if isinstance(current, str):
        return str(value)
    raise TypeError(f"cannot set {key}")
