// The task's activity feed: events rendered by type (overnight/events.py describes each), the page's own
// events first, then the API's event stream (EventSource, with the session cookie), resumed where it left off
// after any reconnect. It follows the bottom until the reader scrolls up.
"use strict";

const Feed = (() => {
  const { el } = Overnight;
  const LONG_LINES = 24;
  const LONG_CHARS = 2400;
  const STATE_WORDS = { queued: "Queued", preparing: "Preparing", running: "Running", succeeded: "Succeeded", failed: "Failed", cancelled: "Cancelled" };
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);

  const own = (table, key) => (typeof key === "string" && Object.hasOwn(table, key) ? table[key] : undefined); // never Object.prototype's
  const safeLink = (url) => (typeof url === "string" && /^https?:\/\//.test(url) ? url : null);

  function folded(label, content, { open = false, mono = true } = {}) {
    return el("details", { open }, el("summary", {}, label), el(mono ? "pre" : "div", { class: mono ? "" : "content" }, content));
  }

  /** Monospace output; past LONG_LINES lines (or LONG_CHARS characters) the head shows and the rest folds. */
  function output(text) {
    const value = typeof text === "string" ? text : JSON.stringify(text ?? "", null, 2);
    const lines = value.split("\n");
    if (lines.length <= LONG_LINES && value.length <= LONG_CHARS) return el("pre", {}, value || "(no output)");
    const head = lines.slice(0, 8).join("\n").slice(0, 800);
    return el("div", {}, el("pre", {}, head + "\n…"), folded(`Show all ${lines.length} lines`, value));
  }

  function parseArguments(raw) {
    if (raw && typeof raw === "object") return raw;
    try {
      return JSON.parse(raw);
    } catch (error) {
      return null;
    }
  }

  function toolArguments(name, raw) {
    const args = parseArguments(raw);
    if (!args || typeof args !== "object") return [el("pre", { class: "wrap" }, String(raw ?? ""))];
    if (name === "bash" && typeof args.command === "string") {
      return [el("pre", { class: "wrap shell" }, `$ ${args.command}`)];
    }
    if (name === "write_file" && typeof args.content === "string") {
      return [el("div", {}, el("code", {}, String(args.file_path ?? args.path ?? ""))), folded(`Content (${args.content.split("\n").length} lines)`, args.content)];
    }
    if (name === "edit" && typeof args.old_string === "string") {
      return [el("div", {}, el("code", {}, String(args.file_path ?? ""))), folded("Replace", args.old_string), folded("With", String(args.new_string ?? ""))];
    }
    return [el("pre", { class: "wrap" }, JSON.stringify(args, null, 2))];
  }

  const PHASES = {
    clone: (d) => `Cloning ${d.repo ?? "the repository"}${d.ref ? ` at ${d.ref}` : ""}`,
    "start-diff": (d) => `Applying the starting changes (${d.files ?? "?"} files)`,
    setup: (d) => `Setting up${d.base_sha ? ` on ${String(d.base_sha).slice(0, 10)}` : ""}`,
    agent: (d) => `Starting the agent${d.environment ? ` (environment ${d.environment})` : ""}`,
    sandbox: () => "Starting the sandbox",
  };

  function setupBody(d) {
    if (d.cached) return { kind: "Set-up", body: [el("p", {}, "Reused the cached environment of an earlier run.")] };
    const failed = d.timed_out || (d.exit_code ?? 0) !== 0;
    const outcome = d.timed_out ? "timed out" : `exit ${d.exit_code}`;
    const line = `${d.script}${d.auto ? " (automatic)" : ""}: ${outcome}${d.duration != null ? ` in ${d.duration} s` : ""}`;
    return {
      kind: "Set-up",
      cls: failed ? "failed" : "",
      body: [el("p", {}, line), d.commands ? folded("Commands", d.commands) : null, d.log ? folded("Log", d.log, { open: failed }) : null],
    };
  }

  function usageText(d) {
    const usage = d.usage || {};
    const parts = [`${usage.prompt_tokens ?? 0} in`, `${usage.completion_tokens ?? 0} out`];
    if (usage.cached_tokens) parts.push(`${usage.cached_tokens} cached`);
    if (d.duration != null) parts.push(`${Number(d.duration).toFixed(1)} s`);
    return parts.join(" · ");
  }

  const RENDERERS = {
    state: (d) => ({ kind: own(STATE_WORDS, d.state) || String(d.state), badge: `state-${d.state}`, body: d.reason ? [el("p", { class: "content" }, d.reason)] : [] }),
    phase: (d) => ({ kind: (own(PHASES, d.phase) || (() => `Phase ${d.phase}`))(d), cls: "quiet" }),
    setup: setupBody,
    model_response: (d) => ({
      kind: `Step ${d.step}`,
      extra: el("span", { class: "sub" }, usageText(d) + (d.finish_reason === "length" ? " · cut off" : "")),
      body: [d.reasoning ? folded("Reasoning", d.reasoning, { mono: false }) : null, d.content ? el("p", { class: "content" }, d.content) : null],
    }),
    format_error: (d) => ({ kind: "Not a tool call", body: [el("p", {}, "The model wrote a tool call as text; it was asked again."), folded("What it wrote", d.content ?? "")] }),
    tool_call: (d) => ({ kind: el("span", { class: "tool-name" }, `▸ ${d.name}`), body: toolArguments(d.name, d.arguments) }),
    tool_result: (d) => ({ kind: `Result of ${d.name}`, body: [toolResult(d)] }),
    compaction: (d) => ({ kind: "History compacted", body: [el("p", {}, `At ${d.context_tokens} context tokens the history was replaced by the model's summary.`), folded("Summary", d.summary ?? "", { mono: false })] }),
    finish: (d) => ({ kind: "Finished", body: [el("p", {}, el("strong", {}, d.pr_title ?? "")), el("p", { class: "content" }, d.summary ?? "")] }),
    patch: (d) => ({
      kind: "Patch stored",
      body: [
        el("p", {}, d.empty ? "No changes." : `${d.files_changed} file(s), ${d.bytes} bytes${d.complete ? "" : " — incomplete: the run ended early, this is what was done so far"}.`),
        d.excluded?.length ? folded(`Left out (${d.excluded.length})`, d.excluded.join("\n")) : null,
      ],
    }),
    publish: (d) => {
      const link = safeLink(d.pull_request);
      if (d.state === "published") return { kind: "Published", body: [el("p", {}, link ? el("a", { href: link }, link) : d.branch ?? "")] };
      return { kind: d.state === "failed" ? "Publishing failed" : "GitHub acknowledgement failed", cls: "failed", body: [el("p", {}, d.reason ?? "")] };
    },
    retry: (d) => ({ kind: "Retry", body: [el("p", {}, "A new attempt of ", el("a", { href: `/tasks/${encodeURIComponent(d.retry_of)}` }, d.retry_of), ".")] }),
    message_delivered: (d) => ({
      kind: d.mode === "queue" ? "Queued message delivered" : "Message delivered",
      extra: el("span", { class: "sub" }, `from ${d.author} · after step ${d.step}`),
      body: [el("p", { class: "content" }, d.text ?? "")],
    }),
    message_dropped: (d) => ({ kind: "Message not delivered", cls: "failed", body: [el("p", {}, d.reason ?? "")] }),
    network_blocked: (d) => ({
      kind: "Request blocked",
      cls: "failed",
      extra: el("span", { class: "sub" }, d.step != null ? `step ${d.step}` : d.phase === "setup" ? "set-up" : String(d.phase ?? "")),
      body: [el("p", {}, el("code", {}, `${d.method} ${d.host}:${d.port}`), (d.count ?? 1) > 1 ? ` ×${d.count}` : "", ` — ${d.reason ?? ""}`)],
    }),
    attempt_ended: (d) => ({
      kind: `Attempt ${d.attempt} ${(own(STATE_WORDS, d.state) || String(d.state)).toLowerCase()}`,
      cls: d.state === "succeeded" ? "" : "failed",
      body: [el("p", {}, el("a", { href: `/tasks/${encodeURIComponent(d.task_id)}` }, "Its activity"), d.reason ? ` — ${d.reason}` : "")],
    }),
    attempts_ranked: (d) => ({
      kind: "Attempts ranked",
      body: [el("p", {}, d.best != null ? `Best: attempt ${d.best} (its patch is this task's).` : "No attempt left a patch.",
        Array.isArray(d.order) && d.order.length ? ` Order, best first: ${d.order.join(", ")}.` : "")],
    }),
    images: (d) => {
      const given = Array.isArray(d.images) ? d.images : [];
      const failed = Array.isArray(d.failed) ? d.failed : [];
      return {
        kind: `${given.length} image${given.length === 1 ? "" : "s"} for the model`,
        cls: failed.length ? "failed" : "",
        body: [
          ...given.map((i) => el("p", {}, `${i.media_type}, ${i.size} bytes (${i.source}) · `, el("code", {}, String(i.sha256 ?? "").slice(0, 12)))),
          ...failed.map((f) => el("p", {}, "Not fetched: ", el("code", {}, String(f.url ?? "")), ` — ${f.reason ?? ""}`)),
        ],
      };
    },
  };

  function toolResult(d, seq) {
    const status = d.error ? "✗ failed" : "✓ done";
    const duration = d.duration != null ? ` in ${Number(d.duration).toFixed(2)} s` : "";
    return el("div", { class: `tool-result${d.error ? " error" : ""}`, "data-seq": seq }, el("div", { class: "status" }, status + duration), output(d.output));
  }

  /** An event the server could not read (``error``: a newer version's, or a broken row), or one whose data the
   * page cannot draw: its type, and its data as stored. */
  function unreadable(event, why) {
    return { kind: String(event.type), extra: el("span", { class: "sub" }, `unreadable: ${why}`), body: [folded("Data as stored", JSON.stringify(event.data, null, 2))] };
  }

  function render(event) {
    const renderer = event.error ? null : own(RENDERERS, event.type);
    let view;
    try {
      view = renderer ? renderer(event.data || {}) : unreadable(event, event.error || "an event type this page does not know");
    } catch (error) {
      view = unreadable(event, "its data is not what its type promises");
    }
    const kind = view.badge ? el("span", { class: `badge ${view.badge}` }, view.kind) : el("span", { class: "event-kind" }, view.kind);
    const when = new Date(event.created_at);
    const head = el("div", { class: "event-head" }, kind, view.extra || null,
      el("time", { class: "event-time", datetime: event.created_at, title: Overnight.dateTime.format(when) }, Overnight.timeOnly.format(when)));
    return el("article", { class: `event ev-${event.type} ${view.cls || ""}`, "data-seq": event.seq }, head, el("div", { class: "event-body" }, view.body || []));
  }

  class Feed {
    constructor({ container, taskId, jump, status, onEvent }) {
      Object.assign(this, { container, taskId, jump, statusLine: status, onEvent });
      this.lastSeq = 0;
      this.final = false;
      this.calls = new Map();
      this.backoff = 1000;
      this.queue = Promise.resolve();
      // Following stops only when the reader scrolls up (wheel, touch, keys, the scroll bar), never because the
      // feed grew or the layout moved under it; it resumes when they come back to the bottom.
      this.following = true;
      this.readerScrolled = 0;
      const reader = () => { this.readerScrolled = Date.now(); };
      for (const type of ["wheel", "touchmove", "keydown", "pointerdown"]) container.addEventListener(type, reader, { passive: true });
      container.addEventListener("scroll", () => {
        if (this.atBottom()) {
          this.following = true;
          this.jump.hidden = true;
        } else if (Date.now() - this.readerScrolled < 1000) {
          this.following = false;
        }
      });
      new ResizeObserver(() => { if (this.following) this.toBottom(); }).observe(container);
      jump.addEventListener("click", () => this.toBottom());
    }

    atBottom() {
      const c = this.container;
      return c.scrollHeight - c.scrollTop - c.clientHeight < 48;
    }

    toBottom() {
      this.following = true;
      this.container.scrollTop = this.container.scrollHeight;
      this.jump.hidden = true;
    }

    addAll(events) {
      for (const event of events) this.append(event);
      if (this.following) this.toBottom(); else if (events.length) this.jump.hidden = false;
    }

    append(event) {
      if (!(event.seq > this.lastSeq)) return; // seen already (a reconnect replays nothing twice)
      this.lastSeq = event.seq;
      const data = event.data && typeof event.data === "object" ? event.data : {};
      try {
        const call = event.type === "tool_result" && !event.error ? this.calls.get(data.id) : null;
        if (call) {
          call.querySelector(".event-body").append(toolResult(data, event.seq));
        } else {
          const node = render(event);
          if (event.type === "tool_call" && data.id) this.calls.set(data.id, node);
          this.container.append(node);
        }
      } catch (error) { // one odd event never hides the ones after it
        this.container.append(el("article", { class: "event", "data-seq": event.seq }, el("div", { class: "event-head" }, el("span", { class: "event-kind" }, String(event.type)), el("span", { class: "sub" }, "could not be shown"))));
      }
      if (event.type === "state" && FINAL.has(data.state)) this.final = true;
      try {
        this.onEvent?.(event);
      } catch (error) {
        // the page's own reaction to an event (a header refresh) never stops the feed
      }
    }

    status(text) {
      this.statusLine.textContent = text;
    }

    connect() {
      this.source?.close();
      const source = new EventSource(`/v1/tasks/${encodeURIComponent(this.taskId)}/events?after=${this.lastSeq}`);
      this.source = source;
      const receive = (message) => this.receive(message);
      for (const type of Object.keys(RENDERERS)) source.addEventListener(type, receive);
      source.onmessage = receive;
      source.onopen = () => {
        this.backoff = 1000;
        this.status(this.final ? "" : "Live.");
      };
      source.onerror = () => {
        if (this.final) {
          source.close();
          this.status("The task has ended.");
          this.catchUp();
          return;
        }
        this.status("Connection lost; reconnecting…");
        if (source.readyState === EventSource.CLOSED) { // refused outright (a 502 from a proxy, a 401): retry later
          setTimeout(() => this.connect(), this.backoff);
          this.backoff = Math.min(this.backoff * 2, 30000);
        }
      };
    }

    receive(message) {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (error) {
        return;
      }
      this.queue = this.queue.then(() => (event.seq > this.lastSeq + 1 ? this.catchUp() : null)).then(() => this.addAll([event]));
    }

    /** Reads what the stream did not bring (a type this page has no listener for, or the rest after the end). */
    async catchUp() {
      const result = await Overnight.api("GET", `/v1/tasks/${encodeURIComponent(this.taskId)}/events?after=${this.lastSeq}&limit=1000`);
      if (result.ok) this.addAll(result.data.events || []);
    }
  }

  return { Feed, KNOWN_TYPES: Object.keys(RENDERERS), FINAL };
})();
