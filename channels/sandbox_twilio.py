"""The sandbox carrier's Twilio 2010 API: Messages and Calls create / fetch / list, with
basic auth, Twilio's validation errors, sender queues and the callbacks each message earns.

A call created with `Url` asks that URL for its TwiML when answered (after AMD, with
`AnsweredBy`), as a signed form POST, and logs what it got (`fetched_twiml`) or Twilio's
debugger code for why it got nothing usable (`application_error`: 11200 no 2xx answer,
12100 not a TwiML document)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from aiohttp import web
from multidict import MultiDictProxy

from channels import sandbox_wire as wire
from channels.sandbox_callbacks import CallbackSender, TwilioCallback
from channels.sandbox_core import CarrierState, Sent, Step

_ROOT = "/2010-04-01/Accounts/{account_sid}"
_VOICE_FINAL = ("completed", "busy", "no-answer", "failed", "canceled")
_VOICE_EVENT = {"initiated": "initiated", "ringing": "ringing", "in-progress": "answered"}


class TwilioApi:
    def __init__(self, state: CarrierState, callbacks: CallbackSender) -> None:
        self.state = state
        self.callbacks = callbacks

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{_ROOT}/Messages.json", self.create_message),
            web.get(f"{_ROOT}/Messages.json", self.list_messages),
            web.get(_ROOT + "/Messages/{sid}.json", self.fetch_message),
            web.post(f"{_ROOT}/Calls.json", self.create_call),
            web.get(_ROOT + "/Calls/{sid}.json", self.fetch_call),
        ]

    # --- request gates ---------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> str | web.Response:
        """The account SID, or Twilio's 401 (code 20003)."""
        path_sid = request.match_info["account_sid"]
        header = request.headers.get("Authorization", "")
        user = token = ""
        if header[:6].lower() == "basic ":
            try:
                user, _, token = base64.b64decode(header[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user = ""
        accounts = self.state.config.accounts
        ok = bool(user) and user == path_sid and wire.ACCOUNT_SID.fullmatch(user) is not None
        if ok and accounts:
            ok = hmac.compare_digest(accounts.get(user, "").encode(), token.encode())
        if not ok:
            self.state.rejected(401)
            return wire.twilio_error(20003)
        if not accounts:
            self.state.tokens[user] = token
        return user

    def _fault(self) -> web.Response | None:
        fault = self.state.api_fault()
        if fault is None:
            return None
        self.state.rejected(fault)
        if fault == 429:
            return wire.twilio_error(20429, headers={"Retry-After": str(self.state.retry_after())})
        if fault == 503:
            return wire.twilio_error(20503, headers={"Retry-After": str(self.state.retry_after())})
        return wire.twilio_error(20500, status=fault)

    def _refuse(self, code: int, detail: str | None = None) -> web.Response:
        response = wire.twilio_error(code, detail)
        self.state.rejected(response.status)
        return response

    async def _answer(self, sent: Sent, resource: dict[str, Any]) -> web.Response:
        if sent.hung:
            await self.state.hang()
        return web.json_response(resource, status=201)

    # --- messages --------------------------------------------------------------------------

    async def create_message(self, request: web.Request) -> web.Response:
        account = self._authenticate(request)
        if isinstance(account, web.Response):
            return account
        if (fault := self._fault()) is not None:
            return fault
        form = await request.post()
        to = str(form.get("To", ""))
        sender = str(form.get("From", "")) or None
        service = str(form.get("MessagingServiceSid", "")) or None
        body = str(form.get("Body", ""))
        media = tuple(str(u) for u in form.getall("MediaUrl", []))
        callback = str(form.get("StatusCallback", "")) or None
        code = self._check_message(to, sender, service, body, media, callback)
        if code:
            return self._refuse(code)
        queue = service if service and not sender else sender
        assert queue is not None
        now = time.time()
        slot = self.state.schedule(queue, now)
        if slot is None and self.state.config.queue_overflow == "429":
            self.state.rejected(429)
            retry = self.state.queue_retry_after(queue, now)
            return wire.twilio_error(20429, headers={"Retry-After": str(retry)})
        sent = Sent(
            index=0, channel="mms" if media else "sms", to=to, from_=sender,
            provider_sid=self.state.sid("MM" if media else "SM"), account_sid=account,
            time=now, body=body, status_callback=callback, message_id=_message_id(callback),
            sent_at=slot, media_urls=media, messaging_service_sid=service,
            hung=self.state.chance(self.state.config.hang_rate),
            extra={"num_segments": wire.segments(body)},
        )
        self._plan_message(sent, now, overflow=slot is None)
        if sender:
            self.state.owner[sender] = account
        self.state.record(sent)
        self._message_callbacks(sent, queue)
        return await self._answer(sent, wire.message_resource(sent, None))

    def _check_message(self, to: str, sender: str | None, service: str | None, body: str,
                       media: tuple[str, ...], callback: str | None) -> int | None:
        if not to:
            return 21604
        if not wire.is_phone_address(to):
            return 21211
        if sender is None and service is None:
            return 21603
        if sender is not None and not wire.is_sender(sender):
            return 21212
        if service is not None and not wire.SERVICE_SID.fullmatch(service):
            return 21701
        if not body and not media:
            return 21602
        if len(body) > 1600:
            return 21617
        if len(media) > 10:
            return 21623
        if any(urlsplit(u).scheme not in ("http", "https") for u in media):
            return 21620
        if callback is not None and urlsplit(callback).scheme not in ("http", "https"):
            return 21609
        code = (wire.MAGIC_FROM.get(sender or "") or wire.MAGIC_TO.get(to)
                or self.state.config.reject_to.get(to))
        if code:
            return code
        if self.state.config.honor_opt_out and (to, sender or service) in self.state.opted_out:
            return 21610
        return None

    def _plan_message(self, sent: Sent, now: float, *, overflow: bool) -> None:
        state, c = self.state, self.state.config
        if overflow:  # queue_overflow == "30022": accepted, then failed by the carrier
            sent.outcome, sent.error_code = "failed", 30022
            sent.timeline = [(now + state.latency(), "failed", 30022)]
            return
        assert sent.sent_at is not None
        outcome = state.outcome()
        code = None
        if outcome == "failed":
            code = state.rng.choice(c.failed_codes)
            sent.timeline = [(sent.sent_at + state.latency(), "failed", code)]
        else:
            if outcome == "undelivered":
                code = state.rng.choice(c.undelivered_codes)
            sent.timeline = [(sent.sent_at, "sent", None),
                             (sent.sent_at + state.latency(), outcome, code)]
        sent.outcome, sent.error_code = outcome, code

    def _message_callbacks(self, sent: Sent, queue: str) -> None:
        c = self.state.config
        if not c.callbacks_enabled:
            return
        series: list[TwilioCallback] = []
        if sent.status_callback:
            planned = [(at, wire.message_callback(sent, at, status, code))
                       for at, status, code in sent.timeline]
            series = [TwilioCallback(at, sent.status_callback, params, sent.account_sid)
                      for at, params in self.state.quirks(planned)]
        if (sent.outcome == "delivered" and c.inbound_url and sent.from_
                and wire.is_phone_address(sent.from_) and self.state.chance(c.reply_rate)):
            at = sent.timeline[-1][0] + self.state.latency()
            body = self.state.rng.choice(c.reply_bodies)
            params = self._inbound(sent.to, sent.from_, body, (), sent.account_sid, at)

            def note(contact: str = sent.to, body: str = body) -> None:
                self.state.note_inbound_keyword(contact, queue, body)

            series.append(TwilioCallback(at, c.inbound_url, params, sent.account_sid, note))
        self.callbacks.twilio_series(series)

    async def fetch_message(self, request: web.Request) -> web.Response:
        account = self._authenticate(request)
        if isinstance(account, web.Response):
            return account
        sid = request.match_info["sid"]
        sent = self.state.by_sid.get(sid)
        if sent is not None and sent.account_sid == account and sent.channel in ("sms", "mms"):
            return web.json_response(wire.message_resource(sent, time.time()))
        inbound = self.state.inbound.get(sid)
        if inbound is not None and inbound["account_sid"] == account:
            return web.json_response(inbound)
        return wire.twilio_error(20404, f"The requested resource {request.path} was not found")

    async def list_messages(self, request: web.Request) -> web.Response:
        """Newest first, filtered by To / From / DateSent, in Twilio's paging shape."""
        account = self._authenticate(request)
        if isinstance(account, web.Response):
            return account
        q = request.query
        now = time.time()
        rows = [wire.message_resource(s, now) for s in reversed(self.state.log)
                if s.account_sid == account and s.channel in ("sms", "mms")]
        rows += [r for r in reversed(self.state.inbound.values()) if r["account_sid"] == account]
        rows = [r for r in rows if _matches(r, q)]
        size = min(max(int(q.get("PageSize", 50)), 1), 1000)
        page = max(int(q.get("Page", 0)), 0)
        chunk = rows[page * size:(page + 1) * size]
        base = f"/2010-04-01/Accounts/{account}/Messages.json"
        filters = [(k, v) for k, v in q.items() if k not in ("Page", "PageSize", "PageToken")]

        def page_uri(n: int) -> str:
            return f"{base}?{urlencode([*filters, ('PageSize', size), ('Page', n)])}"

        more = len(rows) > (page + 1) * size
        return web.json_response({
            "end": page * size + max(len(chunk) - 1, 0), "first_page_uri": page_uri(0),
            "next_page_uri": f"{page_uri(page + 1)}&PageToken=PA{page + 1}" if more else None,
            "page": page, "page_size": size,
            "previous_page_uri": page_uri(page - 1) if page else None,
            "start": page * size, "uri": page_uri(page), "messages": chunk,
        })

    # --- calls -----------------------------------------------------------------------------

    async def create_call(self, request: web.Request) -> web.Response:
        account = self._authenticate(request)
        if isinstance(account, web.Response):
            return account
        if (fault := self._fault()) is not None:
            return fault
        form = await request.post()
        to, sender = str(form.get("To", "")), str(form.get("From", ""))
        twiml, url = str(form.get("Twiml", "")), str(form.get("Url", ""))
        callback = str(form.get("StatusCallback", "")) or None
        code = self._check_call(to, sender, twiml, url, form)
        if code:
            return self._refuse(code)
        now = time.time()
        amd = str(form.get("MachineDetection", "")) or None
        sent = Sent(
            index=0, channel="voice", to=to, from_=sender, provider_sid=self.state.sid("CA"),
            account_sid=account, time=now, body=twiml or url, status_callback=callback,
            message_id=_message_id(callback), sent_at=now,
            hung=self.state.chance(self.state.config.hang_rate),
            extra={"twiml": twiml or None, "url": url or None, "machine_detection": amd,
                   "status_callback_events": [str(e) for e in
                                              form.getall("StatusCallbackEvent", [])],
                   "fetched_twiml": None, "application_error": None},
        )
        self._plan_call(sent, now, amd)
        self.state.owner[sender] = account
        self.state.record(sent)
        if self.state.config.callbacks_enabled:
            if callback:
                self._call_callbacks(sent, callback)
            answered = next((at for at, status, _ in sent.timeline if status == "in-progress"),
                            None)
            if url and not twiml and answered is not None:
                self.callbacks.spawn(self._fetch_twiml(sent, url, answered))
        return await self._answer(sent, wire.call_resource(sent, None))

    def _check_call(self, to: str, sender: str, twiml: str, url: str,
                    form: MultiDictProxy[Any]) -> int | None:
        if not to:
            return 21201
        if not wire.is_phone_address(to):
            return 21211
        if not sender:
            return 21213
        if not wire.is_phone_address(sender):
            return 21212
        if not twiml and not url and not form.get("ApplicationSid"):
            return 21205
        if twiml:
            try:
                if ET.fromstring(twiml).tag != "Response":
                    return 12100
            except ET.ParseError:
                return 12100
        return self.state.config.reject_to.get(to)

    def _plan_call(self, sent: Sent, now: float, amd: str | None) -> None:
        state, c = self.state, self.state.config
        gap = state.latency()
        x = state.rng.random()
        steps: list[Step] = [(now, "initiated", None)]
        if x < c.failed_rate:
            steps.append((now + gap, "failed", None))
        elif x < c.failed_rate + c.busy_rate + c.no_answer_rate:
            final = "busy" if x < c.failed_rate + c.busy_rate else "no-answer"
            steps += [(now + gap, "ringing", None), (now + 2 * gap, final, None)]
        else:
            answered = now + 2 * gap
            steps += [(now + gap, "ringing", None), (answered, "in-progress", None),
                      (answered + c.call_duration_s, "completed", None)]
            if amd:
                sent.extra["answered_by"] = c.answered_by.get(sent.to) or (
                    "human" if not state.chance(c.machine_rate) else
                    "machine_end_beep" if amd == "DetectMessageEnd" else "machine_start")
        sent.timeline = steps
        sent.outcome = steps[-1][1]

    def _call_callbacks(self, sent: Sent, url: str) -> None:
        wanted = set(sent.extra["status_callback_events"]) or {"completed"}
        steps = [s for s in sent.timeline
                 if (_VOICE_EVENT.get(s[1]) or "completed") in wanted]
        planned = [(at, wire.call_callback(sent, at, status, n))
                   for n, (at, status, _) in enumerate(steps)]
        self.callbacks.twilio_series([TwilioCallback(at, url, params, sent.account_sid)
                                      for at, params in self.state.quirks(planned)])

    async def _fetch_twiml(self, sent: Sent, url: str, at: float) -> None:
        """The answered call asks `url` for its TwiML (POST, the `Method` we support)."""
        await asyncio.sleep(max(0.0, at - time.time()))
        status, body = await self.callbacks.request_twilio(url, wire.call_request(sent, at),
                                                           sent.account_sid)
        if status is None or not 200 <= status < 300:
            sent.extra["application_error"] = 11200
            return
        try:
            twiml = ET.fromstring(body).tag == "Response"
        except ET.ParseError:
            twiml = False
        if twiml:
            sent.extra["fetched_twiml"] = body
        else:
            sent.extra["application_error"] = 12100

    async def fetch_call(self, request: web.Request) -> web.Response:
        account = self._authenticate(request)
        if isinstance(account, web.Response):
            return account
        sent = self.state.by_sid.get(request.match_info["sid"])
        if sent is None or sent.account_sid != account or sent.channel != "voice":
            return wire.twilio_error(20404, f"The requested resource {request.path} was not found")
        return web.json_response(wire.call_resource(sent, time.time()))

    # --- inbound ---------------------------------------------------------------------------

    def _inbound(self, from_: str, to: str, body: str, media: tuple[str, ...],
                 account: str, at: float) -> dict[str, str]:
        sid = self.state.sid("MM" if media else "SM")
        params = wire.inbound_params(sid, account, from_, to, body, media)
        self.state.inbound[sid] = wire.inbound_resource(params, at)
        return params

    async def deliver_inbound(self, from_: str, to: str, body: str,
                              media: tuple[str, ...] = ()) -> dict[str, Any]:
        """A contact texts one of our numbers: Twilio's opt-out handling, then the signed
        incoming-message webhook to `inbound_url`. Returns its SID and the HTTP status."""
        url = self.state.config.inbound_url
        if not url:
            raise ValueError("inbound_url is not configured")
        account = self.state.owner_of(to)
        params = self._inbound(from_, to, body, media, account, time.time())
        self.state.note_inbound_keyword(from_, to, body)
        self.state.counts["inbound"] += 1
        status = await self.callbacks.post_twilio(url, params, account)
        return {"sid": params["MessageSid"], "account_sid": account, "status": status}


def _message_id(callback: str | None) -> str | None:
    if not callback:
        return None
    values = parse_qs(urlsplit(callback).query).get("message_id")
    return values[0] if values else None


def _date(value: str) -> str:
    """Twilio's DateSent filters take a date or an ISO datetime; compare on the date."""
    value = value.strip()
    if len(value) > 10:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed.astimezone(UTC).date().isoformat()
    return value


def _matches(row: dict[str, Any], q: Any) -> bool:
    if "To" in q and row["to"] != q["To"]:
        return False
    if "From" in q and row["from"] != q["From"]:
        return False
    sent_on = None
    if row["date_sent"]:
        sent_on = datetime.strptime(row["date_sent"], "%a, %d %b %Y %H:%M:%S %z").date().isoformat()
    for key, test in (("DateSent", str.__eq__), ("DateSent<", str.__le__),
                      ("DateSent>", str.__ge__)):
        if key in q and (sent_on is None or not test(sent_on, _date(q[key]))):
            return False
    return True
