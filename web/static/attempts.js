// A best-of-N task's attempts: tabs above the diff (the WAI-ARIA tabs pattern), the chosen attempt's patch drawn
// by the task page's own diff view (comments on lines only on the best one's, which is the task's own patch and
// what a follow-up starts from). The tabs are the server's escaped rendering, re-read while attempts run.
"use strict";

const Attempts = (() => {
  const POLL_MS = 3000;

  class Tabs {
    constructor({ root, taskId, diff }) {
      Object.assign(this, { root, taskId, diff });
      this.body = root.querySelector("#attempts-body");
      this.chosen = false; // the reader picked a tab: refreshes keep it (otherwise the best one, once ranked)
      this.settled = false;
      this.shown = null;
      this.timer = null;
      this.body.addEventListener("click", (event) => {
        const tab = event.target.closest('[role="tab"]');
        if (tab) this.select(tab, { byReader: true });
      });
      this.body.addEventListener("keydown", (event) => this.onKey(event));
      document.addEventListener("visibilitychange", () => { if (!document.hidden) this.schedule(0); });
      this.schedule(POLL_MS);
    }

    tabs() {
      return [...this.body.querySelectorAll('[role="tab"]')];
    }

    current() {
      return this.body.querySelector('[role="tab"][aria-selected="true"]') || this.tabs()[0] || null;
    }

    onKey(event) {
      const tab = event.target.closest?.('[role="tab"]');
      if (!tab) return;
      const tabs = this.tabs();
      const index = tabs.indexOf(tab);
      const next = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (next === undefined) return;
      event.preventDefault();
      this.select(tabs[(next + tabs.length) % tabs.length], { byReader: true, focus: true });
    }

    select(tab, { byReader = false, focus = false } = {}) {
      for (const other of this.tabs()) {
        const on = other === tab;
        other.setAttribute("aria-selected", String(on));
        other.tabIndex = on ? 0 : -1;
        const panel = document.getElementById(other.getAttribute("aria-controls"));
        if (panel) panel.hidden = !on;
      }
      if (byReader) this.chosen = true;
      if (focus) tab.focus();
      this.show();
    }

    /** The chosen attempt's patch below the tabs, and the download links and apply command for it. */
    show() {
      const tab = this.current();
      if (!tab) return;
      const attempt = tab.dataset.attempt;
      const best = tab.dataset.best === "true";
      // An attempt is a task of its own: its patch is at its own address (the best one's is also the task's).
      const own = encodeURIComponent(tab.dataset.task);
      for (const link of document.querySelectorAll("a[data-patch-format]")) {
        const format = link.dataset.patchFormat;
        link.href = `/v1/tasks/${best ? encodeURIComponent(this.taskId) : own}/patch?format=${format}`;
        link.setAttribute("download", `overnight-${this.taskId}${best ? "" : `-attempt-${attempt}`}.${format}`);
      }
      const apply = document.getElementById("apply-line");
      if (apply) apply.value = `overnight apply ${this.taskId}${best ? "" : ` --attempt ${attempt}`}`;
      // An attempt's patch exists once it has ended.
      const key = `${attempt}:${best}:${tab.dataset.final}`;
      if (key === this.shown) return;
      this.shown = key;
      this.diff.source(`/v1/tasks/${own}/patch?format=json`, best);
    }

    schedule(delay = POLL_MS) {
      clearTimeout(this.timer);
      if (this.settled) return;
      this.timer = setTimeout(() => this.refresh(), delay);
    }

    async refresh() {
      if (document.hidden) return; // picked up again when the tab is shown
      const chosen = this.chosen && this.current() ? `?selected=${encodeURIComponent(this.current().dataset.attempt)}` : "";
      let response;
      try {
        response = await fetch(`/tasks/${encodeURIComponent(this.taskId)}/attempts${chosen}`, { credentials: "same-origin", redirect: "manual" });
      } catch (error) {
        return this.schedule(); // the API is restarting
      }
      if (!response.ok) return this.schedule(POLL_MS * 3);
      const focused = this.body.contains(document.activeElement) ? document.activeElement.dataset?.attempt : null;
      this.body.innerHTML = await response.text(); // the server's escaped rendering of the same template
      if (focused) this.body.querySelector(`[role="tab"][data-attempt="${CSS.escape(focused)}"]`)?.focus();
      this.settled = response.headers.get("X-Overnight-Settled") === "true";
      this.show();
      this.schedule();
    }
  }

  /** The tabs of the page's attempts, or null when the task has none (it ran once). */
  function start({ taskId, diff }) {
    const root = document.getElementById("attempts");
    return root ? new Tabs({ root, taskId, diff }) : null;
  }

  return { start };
})();
