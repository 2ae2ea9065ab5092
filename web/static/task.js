// The task page: tabs (activity, changes), the header kept current while the task runs, cancel and retry, and
// the box below: a message to the agent while the task runs, then the follow-up that sends the review's comments
// with it.
"use strict";

(() => {
  const summary = document.getElementById("summary");
  if (!summary) return;
  const taskId = summary.dataset.task;
  const { el } = Overnight;
  let final = summary.dataset.final === "true";
  let ready = false;

  const reviewList = document.getElementById("review-list");
  const followUp = document.getElementById("follow-up-form");
  const followUpError = document.getElementById("follow-up-error");
  const followUpStatus = document.getElementById("follow-up-status");
  const actionMessage = () => document.getElementById("action-message");

  function showReview(review) {
    document.getElementById("review").hidden = review.items.length === 0;
    document.getElementById("review-count").textContent = `(${review.items.length})`;
    reviewList.replaceChildren(...review.items.map((item) => {
      const show = el("button", { type: "button", "aria-label": `Show the line ${Diff.Review.where(item)}` }, "Show");
      show.addEventListener("click", () => { selectTab(changesTab, false); diff.focusComment(item); });
      const remove = el("button", { type: "button", "aria-label": `Remove the comment ${Diff.Review.where(item)}` }, "Remove");
      remove.addEventListener("click", () => review.remove(item.id));
      return el("li", {}, `${Diff.Review.where(item)}: ${item.text}`, show, remove);
    }));
    if (diff) diff.showComments();
  }

  const review = new Diff.Review(taskId, showReview);
  const diff = new Diff.DiffView({
    taskId,
    review,
    container: document.getElementById("diff"),
    tree: document.getElementById("file-tree"),
    toolbar: document.getElementById("diff-toolbar"),
    notes: document.getElementById("patch-notes"),
    help: document.getElementById("comment-help"),
    count: document.getElementById("changes-count"),
  });
  showReview(review);
  // A best-of-N task: its attempts as tabs above the diff, which then shows the chosen attempt's patch.
  const attempts = typeof Attempts === "undefined" ? null : Attempts.start({ taskId, diff });

  // Tabs: arrow keys move between them (the WAI-ARIA tabs pattern); the address keeps the one shown.
  const tabs = [...document.querySelectorAll('.tabs [role="tab"]')];
  const [activityTab, changesTab] = tabs;

  function selectTab(tab, focus = true) {
    for (const other of tabs) {
      const on = other === tab;
      other.setAttribute("aria-selected", String(on));
      other.tabIndex = on ? 0 : -1;
      document.getElementById(other.getAttribute("aria-controls")).hidden = !on;
    }
    if (focus) tab.focus();
    history.replaceState(null, "", tab === changesTab ? "#changes" : "#activity");
    if (tab === changesTab && !diff.loaded && final && !attempts) diff.load();
    if (tab === activityTab) feed.toBottom();
  }

  for (const tab of tabs) {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (event) => {
      const index = tabs.indexOf(tab);
      const next = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (next === undefined) return;
      event.preventDefault();
      selectTab(tabs[(next + tabs.length) % tabs.length]);
    });
  }

  // The header (state, figures, actions) is re-read from the server while the task moves.
  let refreshTimer = null;
  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refreshSummary, 700);
  }

  async function refreshSummary() {
    let response;
    try {
      response = await fetch(`/tasks/${encodeURIComponent(taskId)}/summary`, { credentials: "same-origin", redirect: "manual" });
    } catch (error) {
      return scheduleRefresh(); // the API is restarting
    }
    if (!response.ok) return;
    const focused = document.activeElement?.dataset?.action;
    summary.innerHTML = await response.text(); // the server's escaped rendering of the same template
    Overnight.localTimes(summary);
    if (focused) summary.querySelector(`[data-action="${focused}"]`)?.focus();
    const state = response.headers.get("X-Overnight-State");
    summary.dataset.state = state;
    if (Feed.FINAL.has(state) && !final) becameFinal();
  }

  function becameFinal() {
    final = true;
    summary.dataset.final = "true";
    followUp.querySelectorAll('[data-action="cancel"]').forEach((button) => button.remove());
    // The message box becomes the follow-up box: a new task from this one's patch.
    document.getElementById("message-after-choice")?.remove();
    document.getElementById("follow-up-label").textContent = "Follow-up";
    for (const node of followUp.parentElement.querySelectorAll("[data-final-text]")) node.textContent = node.dataset.finalText;
    followUp.elements.instruction.placeholder = "Now also…";
    if (attempts) attempts.refresh(); else diff.load();
  }

  const feed = new Feed.Feed({
    container: document.getElementById("feed"),
    taskId,
    jump: document.getElementById("jump-latest"),
    status: document.getElementById("stream-status"),
    onEvent: (event) => {
      if (ready && ["state", "setup", "model_response", "patch", "publish", "finish"].includes(event.type)) scheduleRefresh();
      if (ready && attempts && ["attempt_ended", "attempts_ranked"].includes(event.type)) attempts.refresh();
    },
  });

  async function act(button) {
    const action = button.dataset.action;
    button.disabled = true;
    const result = await Overnight.api("POST", `/v1/tasks/${encodeURIComponent(taskId)}/${action}`);
    if (result.ok && action === "retry") {
      window.location.assign(`/tasks/${encodeURIComponent(result.data.id)}`);
      return;
    }
    button.disabled = false;
    const message = actionMessage();
    if (message) message.textContent = result.ok ? (action === "cancel" ? "Cancelling…" : "") : Overnight.errorMessage(result);
    scheduleRefresh();
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-action]");
    if (button && !button.disabled) act(button);
  });

  /** While the task has not ended, the box talks to its agent: a steer reaches it at its next step, a queued
   * message ("after it finishes") when it would finish. */
  async function sendMessage() {
    const box = followUp.elements.instruction;
    const text = box.value.trim();
    if (!text) {
      followUpError.textContent = "Write the message first.";
      box.setAttribute("aria-invalid", "true");
      box.focus();
      return;
    }
    box.removeAttribute("aria-invalid");
    const mode = followUp.elements.after?.checked ? "queue" : "steer";
    const button = document.getElementById("send-follow-up");
    button.disabled = true;
    const result = await Overnight.api("POST", `/v1/tasks/${encodeURIComponent(taskId)}/messages`, { mode, text });
    button.disabled = false;
    if (result.ok) {
      box.value = "";
      followUpStatus.textContent = mode === "queue" ? "Sent: the agent reads it when it would finish." : "Sent: the agent reads it at its next step.";
      return;
    }
    if (result.data?.error?.code === "task_ended") {
      becameFinal(); // the text stays in the box, to be sent as a follow-up
      scheduleRefresh();
      followUpError.textContent = "The task has just ended: send this as a follow-up instead (a new task from its patch).";
      return;
    }
    followUpError.textContent = Overnight.errorMessage(result);
  }

  followUp.addEventListener("submit", async (event) => {
    event.preventDefault();
    followUpError.textContent = "";
    followUpStatus.textContent = "";
    if (!final) return sendMessage();
    const box = followUp.elements.instruction;
    const written = box.value.trim();
    const comments = review.text();
    if (!written && !comments) {
      followUpError.textContent = "Write what to do next, or comment on lines of the diff first.";
      box.setAttribute("aria-invalid", "true");
      box.focus();
      return;
    }
    box.removeAttribute("aria-invalid");
    const instruction = [written || "Address these review comments.", comments].filter(Boolean).join("\n\n");
    const button = document.getElementById("send-follow-up");
    button.disabled = true;
    const result = await Overnight.api("POST", `/v1/tasks/${encodeURIComponent(taskId)}/follow-up`, { instruction });
    button.disabled = false;
    if (result.ok) {
      review.clear();
      window.location.assign(`/tasks/${encodeURIComponent(result.data.id)}`);
      return;
    }
    const code = result.data?.error?.code;
    followUpError.textContent = code === "no_patch_to_follow"
      ? `${Overnight.errorMessage(result)}: a follow-up starts from this task's patch, once the task has ended with one.`
      : Overnight.errorMessage(result);
  });

  // Start: the patch of an ended task is asked for first (it arrives while the feed is drawn), then the events
  // the page came with, then the live stream from where they end.
  if (attempts) attempts.show(); else if (final) diff.load();
  const initial = JSON.parse(document.getElementById("initial-events").textContent || "[]");
  feed.addAll(initial);
  feed.container.removeAttribute("aria-busy");
  feed.toBottom();
  ready = true;
  feed.connect();
  const wantChanges = window.location.hash === "#changes" || (final && summary.dataset.patch === "true" && window.location.hash !== "#activity");
  selectTab(wantChanges ? changesTab : activityTab, false);
})();
