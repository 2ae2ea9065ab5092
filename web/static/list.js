// The task list refreshes its rows in place every few seconds while the tab is visible: states, durations and
// patch figures move, new tasks appear on the first page. Rows are rendered by the server (the same template
// as the page); a row that did not change is left alone, and keyboard focus stays on the row it was in.
"use strict";

(() => {
  const table = document.getElementById("task-table");
  const body = document.getElementById("task-rows");
  if (!table || !body) return;
  const REFRESH_MS = 4000;
  const known = new Map();
  for (const row of body.rows) known.set(row.id, row.outerHTML);
  Overnight.localTimes(body);

  function focusedRow() {
    const active = document.activeElement;
    return active && body.contains(active) ? active.closest("tr")?.id : null;
  }

  function apply(html) {
    const template = document.createElement("template");
    template.innerHTML = html; // the server's own escaped rendering of the same rows
    const fresh = [...template.content.querySelectorAll("tr")];
    const keepFocus = focusedRow();
    const wanted = new Set(fresh.map((row) => row.id));
    for (const row of [...body.rows]) if (!wanted.has(row.id)) row.remove();
    let previous = null;
    for (const row of fresh) {
      const source = row.outerHTML;
      let current = document.getElementById(row.id);
      if (!current || known.get(row.id) !== source) {
        Overnight.localTimes(row);
        if (current) current.replaceWith(row); else body.insertBefore(row, previous ? previous.nextSibling : body.firstChild);
        known.set(row.id, source);
        current = row;
        if (keepFocus === row.id) row.querySelector("a")?.focus();
      } else if (previous ? current.previousElementSibling !== previous : current !== body.firstElementChild) {
        body.insertBefore(current, previous ? previous.nextSibling : body.firstChild);
      }
      previous = current;
    }
  }

  async function refresh() {
    if (document.hidden) return;
    try {
      const response = await fetch(table.dataset.refresh, { credentials: "same-origin", redirect: "manual" });
      if (response.ok) apply(await response.text());
    } catch (error) {
      // the API is restarting: the next round tries again
    }
  }

  setInterval(refresh, REFRESH_MS);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
})();
