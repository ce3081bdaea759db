/* Switchboard pages: JSON forms and buttons that call the REST API with the session's CSRF
   token, and the live feed over the WebSocket (resumes with `since` after a drop). */
(function () {
  "use strict";

  function csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function uniqueKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function api(method, url, body) {
    const headers = { "X-CSRF-Token": csrf(), Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method === "POST") headers["Idempotency-Key"] = uniqueKey();
    const response = await fetch(url, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      const error = new Error((data && data.detail) || "The request failed (HTTP " + response.status + ").");
      error.problem = data;
      throw error;
    }
    return data;
  }

  function splitList(value) {
    return value.split(/[,;]/).map((s) => s.trim()).filter(Boolean);
  }

  /* The audience step's filters, as console.audience_spec builds them for the live count,
     each with the input it came from (to point at it when the API refuses the filter). */
  function audienceFilters(form) {
    const input = (name) => form.querySelector('[data-filter="' + name + '"]');
    const out = [];
    const regions = input("phone_region");
    if (regions && splitList(regions.value).length) {
      out.push({ input: regions, filter: { field: "phone_region", op: "in", value: splitList(regions.value).map((r) => r.toUpperCase()) } });
    }
    const zones = input("timezone");
    const picked = zones ? Array.from(zones.selectedOptions, (o) => o.value) : [];
    if (picked.length) out.push({ input: zones, filter: { field: "timezone", op: "in", value: picked } });
    const name = input("custom_field");
    const values = name ? splitList(input("custom_value").value) : [];
    if (name && !name.value.trim() && values.length) {  // as the live count says
      const message = "name the custom field to compare with; the value alone matches nothing";
      const error = new Error("Custom field: " + message);
      error.problem = { errors: [{ field: "custom_field", message }] };
      throw error;
    }
    if (name && name.value.trim()) {
      const field = "custom." + name.value.trim();
      if (!values.length) out.push({ input: name, filter: { field, op: "exists", value: true } });
      else if (values.length === 1) out.push({ input: name, filter: { field, op: "eq", value: values[0] } });
      else out.push({ input: name, filter: { field, op: "in", value: values } });
    }
    return out;
  }

  function formBody(form) {
    const body = {};
    const nested = {};
    const filters = audienceFilters(form).map((f) => f.filter);
    if (filters.length) nested.audience = { filters };
    for (const el of form.elements) {
      if (!el.name || el.disabled || el.type === "submit" || el.type === "button") continue;
      if (el.dataset.filter) continue;
      const type = el.dataset.type;
      const target = el.dataset.into ? (nested[el.dataset.into] = nested[el.dataset.into] || {}) : body;
      if (el.type === "checkbox" && !el.checked) {
        if (type === "list" && !(el.name in target)) target[el.name] = [];
        continue;
      }
      let value = el.value;
      if (value === "" && el.hasAttribute("data-optional")) continue;
      if (type === "number") value = value === "" ? null : Number(value);
      else if (type === "nullable") value = value === "" ? null : value;
      else if (type === "datetime") value = new Date(value).toISOString();
      else if (type === "tags") {
        value = splitList(value);
        if (!value.length) continue;
      } else if (type === "lines") value = value.split(/\s+/).filter(Boolean);
      if (type === "list") (target[el.name] = target[el.name] || []).push(value);
      else target[el.name] = value;
    }
    Object.assign(body, nested);
    for (const attr of Object.keys(form.dataset)) {
      if (!attr.startsWith("empty")) continue;
      const key = attr.slice(5).toLowerCase();
      if (!body[key] || !Object.keys(body[key]).length) body[key] = JSON.parse(form.dataset[attr]);
    }
    return body;
  }

  /* A problem's field path as the form shows it: the input it names (for the audience's
     filters, the input that made filter N) and, for one item of a list, the value typed. */
  function fieldOf(scope, path) {
    const parts = String(path).split(".");
    if (parts[0] === "audience" && parts[1] === "filters" && scope.querySelector("[data-filter]")) {
      const made = audienceFilters(scope)[Number(parts[2])];
      if (made) {
        const value = made.filter.value;
        return { el: made.input, given: parts[3] === "value" && Array.isArray(value) ? value[Number(parts[4])] : undefined };
      }
    }
    const name = parts[0] === "audience" ? parts[1] : parts[0];
    return { el: name ? scope.querySelector('[name="' + CSS.escape(name) + '"]') : null };
  }

  function labelOf(el) {
    if (el.dataset.label) return el.dataset.label;
    const label = el.id && document.querySelector('label[for="' + CSS.escape(el.id) + '"]');
    return label ? label.textContent.trim() : el.name;
  }

  /* The error once, in the form's words ("Country: “XX” is not a two-letter region code"),
     with each field it names marked invalid and the first one focused. */
  function showError(scope, error) {
    const box = scope.querySelector("[data-form-error]");
    scope.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
    const problem = error.problem || {};
    const words = [];
    const marked = [];
    for (const e of problem.errors || []) {
      const { el, given } = fieldOf(scope, e.field);
      const message = given !== undefined && String(e.message).startsWith("not ") ? "“" + given + "” is " + e.message : e.message;
      words.push((el ? labelOf(el) : e.field) + ": " + message);
      if (el) { el.setAttribute("aria-invalid", "true"); marked.push(el); }
    }
    const text = words.length ? words.join("; ") : error.message;
    if (!box) { alert(text); return; }
    box.textContent = text;
    box.hidden = false;
    if (marked.length) {
      const details = marked[0].closest("details");
      if (details) details.open = true;
      marked[0].focus();
    }
  }

  function clearError(scope) {
    const box = scope.querySelector("[data-form-error]");
    if (box) { box.hidden = true; box.textContent = ""; }
  }

  async function after(el, result) {
    const then = el.dataset.then;
    if (el.dataset.redirect && result && result.id) {
      location.assign(el.dataset.redirect.replace("{id}", result.id));
    } else if (then === "reload") {
      location.reload();
    } else if (then === "reset") {
      // A segment check still in flight for the text just sent must not paint it back.
      el.querySelectorAll("textarea").forEach((t) => htmx.trigger(t, "htmx:abort"));
      el.reset();
      const check = el.querySelector(".reply-check");
      if (check) check.textContent = "";
      Inbox.refreshThread();
    } else if (then === "refresh") {
      Inbox.refreshList();
    }
  }

  document.addEventListener("submit", async (event) => {
    const form = event.target.closest("form[data-api-form]");
    if (!form) return;
    event.preventDefault();
    clearError(form);
    const buttons = form.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    try {
      let url = form.dataset.action;
      const method = form.dataset.method || "POST";
      let body = formBody(form);
      if (form.dataset.query) {
        const params = new URLSearchParams();
        for (const name of form.dataset.query.split(",")) params.set(name, body[name] || "");
        url += "?" + params.toString();
        body = undefined;
      }
      await after(form, await api(method, url, body));
    } catch (error) {
      showError(form, error);
    } finally {
      // A reply form stays shut if the contact opted out meanwhile (Inbox.showOptOut).
      buttons.forEach((b) => (b.disabled = form.dataset.blocked === "true"));
    }
  });

  /* htmx sends a datetime-local input as typed (the browser's clock); send the instant, as
     formBody does for the API, or nothing when it is empty. */
  document.addEventListener("htmx:configRequest", (event) => {
    const params = event.detail.parameters;
    document.querySelectorAll('input[data-type="datetime"]').forEach((el) => {
      if (params[el.name]) params[el.name] = new Date(params[el.name]).toISOString();
      else delete params[el.name];
    });
  });

  document.addEventListener("change", (event) => {
    const el = event.target;
    if (el.matches("[data-submit-on-change]")) el.form.requestSubmit();
    if (el.id === "channel") Console.channelChanged();
    if (el.id === "template_id") Console.templatePicked(el);
  });

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-api-button]");
    if (!button) return;
    if (button.dataset.confirm && !confirm(button.dataset.confirm)) return;
    const scope = button.closest("section, form, li") || document.body;
    clearError(scope);
    button.disabled = true;
    try {
      await after(button, await api(button.dataset.method || "POST", button.dataset.action));
    } catch (error) {
      showError(scope, error);
      button.disabled = false;
    }
  });

  const Console = {
    channelChanged() {
      const select = document.getElementById("channel");
      if (!select) return;
      const channel = select.value;
      const senders = channel === "mms" ? "sms" : channel;  // MMS goes out from SMS numbers
      document.querySelectorAll("input[data-channel]").forEach((box) => {
        const off = box.dataset.channel !== senders;
        box.disabled = off;
        box.closest(".check").hidden = off;
      });
      // Fields of some channels only (an email's subject, an MMS's media): off for others.
      document.querySelectorAll("[data-channels]").forEach((part) => {
        const off = !part.dataset.channels.split(" ").includes(channel);
        part.hidden = off;
        part.querySelectorAll("input, textarea").forEach((el) => (el.disabled = off));
      });
      // The template picker offers the channel's templates only.
      const picker = document.getElementById("template_id");
      if (!picker) return;
      picker.querySelectorAll("option[data-template-channel]").forEach((option) => {
        const off = option.dataset.templateChannel !== channel;
        option.hidden = off;
        option.disabled = off;
      });
      if (picker.selectedOptions[0] && picker.selectedOptions[0].disabled) picker.value = "";
    },
    /* A template picked fills the message's parts (still editable); "none" keeps them. */
    templatePicked(picker) {
      const option = picker.selectedOptions[0];
      if (!option || !option.value) return;
      const parts = { body: option.dataset.body, subject: option.dataset.subject,
                      html: option.dataset.html, media_urls: option.dataset.media };
      for (const [id, value] of Object.entries(parts)) {
        const el = document.getElementById(id);
        if (el) el.value = value;
      }
      htmx.trigger(document.getElementById("body"), "input");  // redraw the preview
    },
  };

  /* One WebSocket per page: cookie-authenticated, resumes from the last seq it saw. */
  class Feed {
    constructor(subAccount, topics, since, onEvent, onResync) {
      Object.assign(this, { subAccount, topics, since, onEvent, onResync, delay: 500 });
      this.connect();
    }

    connect() {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      const ws = new WebSocket(scheme + "//" + location.host + "/v1/realtime?sub_account=" + this.subAccount);
      this.ws = ws;
      ws.onmessage = (message) => {
        const frame = JSON.parse(message.data);
        if (frame.type === "hello") {
          banner(false);
          this.delay = 500;
          ws.send(JSON.stringify({ type: "subscribe", topics: this.topics, since: this.since }));
        } else if (frame.type === "subscribed") {
          if (this.since === null) this.since = frame.since;
        } else if (frame.type === "event") {
          this.since = frame.seq;
          this.onEvent(frame);
        } else if (frame.type === "ping") {
          ws.send(JSON.stringify({ type: "pong" }));
        } else if (frame.type === "resync_required") {
          this.since = frame.seq;
          this.onResync();
          ws.send(JSON.stringify({ type: "subscribe", topics: this.topics, since: this.since }));
        }
      };
      ws.onclose = () => {
        banner(true);
        setTimeout(() => this.connect(), this.delay);
        this.delay = Math.min(this.delay * 2, 10000);
      };
    }
  }

  function banner(show) {
    const el = document.getElementById("reconnecting");
    if (el) el.hidden = !show;
  }

  const Inbox = {
    root: null,
    timer: null,
    refreshList() {
      if (!this.root) return;
      htmx.ajax("GET", this.root.dataset.listUrl, { target: "#inbox-list", swap: "innerHTML" });
    },
    thread() { return document.getElementById("thread"); },
    /* The messages, then the opt-out notice and the reply form as they say: a STOP (or a
       START) that arrives while the thread is open shuts (or reopens) the reply box. */
    async refreshThread() {
      const thread = this.thread();
      if (!thread) return;
      await htmx.ajax("GET", thread.dataset.messagesUrl, { target: "#messages", swap: "innerHTML" });
      this.showOptOut();
    },
    showOptOut() {
      const list = document.querySelector("#messages > ol.bubbles");
      const form = document.getElementById("reply");
      if (!list || !form) return;
      const out = list.dataset.optedOut === "true";
      document.getElementById("opted-out").hidden = !out;
      document.getElementById("reply-blocked").hidden = !out;
      form.dataset.blocked = String(out);
      const box = form.querySelector("textarea");
      box.disabled = out;
      if (out) box.setAttribute("aria-describedby", "reply-blocked");
      else box.removeAttribute("aria-describedby");
      form.querySelectorAll("button").forEach((b) => (b.disabled = out));
    },
    async markRead() {
      const thread = this.thread();
      if (!thread) return;
      const url = "/v1/sub-accounts/" + this.root.dataset.feed + "/conversations/" + thread.dataset.conversation + "/read";
      try { await api("POST", url); } catch (e) { /* not fatal: the badge stays */ }
    },
    onEvent(frame) {
      const thread = this.thread();
      const mine = thread && frame.topic === "conversation:" + thread.dataset.conversation;
      if (mine && (frame.event === "message.created" || frame.event === "message.status_updated")) {
        this.refreshThread();
        if (frame.event === "message.created" && frame.data.direction === "inbound") this.markRead();
      }
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.refreshList(), 150);
    },
    start() {
      this.root = document.querySelector("[data-feed]");
      if (!this.root) return;
      const since = this.root.dataset.seq === "" ? null : Number(this.root.dataset.seq);
      window.switchboardFeed = new Feed(this.root.dataset.feed, ["inbox"], since,
        (frame) => this.onEvent(frame), () => { this.refreshList(); this.refreshThread(); });
      const thread = this.thread();
      if (thread && Number(thread.dataset.unread) > 0) this.markRead();
    },
  };

  /* The live campaign view: every event on campaign:<id> asks htmx to redraw #live (the
     section throttles redraws); a finished campaign stops listening. */
  const CampaignLive = {
    start() {
      const root = document.getElementById("campaign-feed");
      const live = document.getElementById("live");
      if (!root || !live || live.dataset.liveFinished === "true") return;
      const since = root.dataset.seq === "" ? null : Number(root.dataset.seq);
      const moved = () => {
        const section = document.getElementById("live");
        if (section && section.dataset.liveFinished === "false") htmx.trigger(section, "campaign-moved");
      };
      window.switchboardFeed = new Feed(root.dataset.feedSa, [root.dataset.topic], since, moved, moved);
    },
  };

  document.addEventListener("DOMContentLoaded", () => {
    Console.channelChanged();
    Inbox.start();
    CampaignLive.start();
  });
})();

/* The contacts page's CSV import: the file goes to the REST API as multipart (session cookie
   and CSRF token, as every change from the pages), then the page shows the job's progress. */
(function () {
  "use strict";

  function problemWords(form, data, status) {
    const errors = (data && data.errors) || [];
    if (!errors.length) return (data && data.detail) || "The upload failed (HTTP " + status + ").";
    return errors.map((e) => {
      const input = form.querySelector('[name="' + CSS.escape(e.field) + '"]');
      const label = input && input.id && form.querySelector('label[for="' + input.id + '"]');
      return (label ? label.textContent.trim() : e.field) + ": " + e.message;
    }).join("; ");
  }

  document.addEventListener("submit", async (event) => {
    const form = event.target.closest("form[data-import-form]");
    if (!form) return;
    event.preventDefault();
    const box = form.querySelector("[data-form-error]");
    const button = form.querySelector('button[type="submit"]');
    box.hidden = true;
    button.disabled = true;
    try {
      const meta = document.querySelector('meta[name="csrf-token"]');
      const response = await fetch(form.dataset.action, {
        method: "POST", credentials: "same-origin", body: new FormData(form),
        headers: { "X-CSRF-Token": meta ? meta.content : "", Accept: "application/json" },
      });
      let data = null;
      try { data = await response.json(); } catch (e) { data = null; }
      if (!response.ok) throw new Error(problemWords(form, data, response.status));
      location.assign(form.dataset.redirect.replace("{id}", data.id));
    } catch (error) {
      box.textContent = error.message;
      box.hidden = false;
      button.disabled = false;
    }
  });
})();
