// Shared by every page: calling the API with the session's CSRF token, times in the viewer's own time zone,
// ticking durations, copy buttons. Text from the server or the API is only ever set as text, never as HTML.
"use strict";

const Overnight = (() => {
  const csrfToken = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  async function api(method, url, body, headers = {}) {
    const options = { method, credentials: "same-origin", headers: { Accept: "application/json", ...headers } };
    if (method !== "GET" && method !== "HEAD") options.headers["X-CSRF-Token"] = csrfToken();
    if (body instanceof FormData) {
      options.body = body; // the browser sets multipart/form-data with its boundary
    } else if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, options);
    } catch (error) {
      return { ok: false, status: 0, data: { error: { code: "network", message: "The server could not be reached; try again in a moment." } } };
    }
    let data = null;
    try {
      data = await response.json();
    } catch (error) {
      data = null;
    }
    return { ok: response.ok, status: response.status, data };
  }

  function errorMessage(result) {
    if (result.status === 401) return "Your session has ended; sign in again (reload the page).";
    return result.data?.error?.message || `The server answered ${result.status}.`;
  }

  /** An element with attributes and children (strings become text nodes: never parsed as HTML). */
  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  const timeOnly = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

  function durationText(seconds) {
    if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
    return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  }

  function ageText(date) {
    const seconds = (Date.now() - date.getTime()) / 1000;
    if (seconds < 45) return "just now";
    if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
    if (seconds < 7 * 86400) return `${Math.round(seconds / 86400)} d ago`;
    return dateTime.format(date);
  }

  function localTimes(root = document) {
    for (const node of root.querySelectorAll("time[data-local]")) {
      const date = new Date(node.dateTime);
      node.textContent = dateTime.format(date);
      node.title = date.toString();
    }
    for (const node of root.querySelectorAll("time[data-age]")) {
      const date = new Date(node.dateTime);
      node.textContent = ageText(date);
      node.title = dateTime.format(date);
    }
  }

  function tick() {
    for (const node of document.querySelectorAll("[data-since]")) {
      node.textContent = durationText((Date.now() - new Date(node.dataset.since).getTime()) / 1000);
    }
    for (const node of document.querySelectorAll("time[data-age]")) node.textContent = ageText(new Date(node.dateTime));
  }

  async function copyFrom(button) {
    const source = document.querySelector(button.dataset.copy);
    if (!source) return;
    const text = source.value ?? source.textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch (error) {
      source.select?.(); // not a secure context: select it, and let the browser's own copy do the rest
      document.execCommand?.("copy");
    }
    const label = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-copy]");
    if (button) copyFrom(button);
  });
  document.addEventListener("DOMContentLoaded", () => localTimes());
  // Signing out forgets the review comments kept in this browser (the next person here may see the same tasks).
  document.addEventListener("submit", (event) => {
    if (event.target.getAttribute("action") !== "/sign-out") return;
    try {
      for (const key of Object.keys(localStorage)) if (key.startsWith("overnight-review-")) localStorage.removeItem(key);
    } catch (error) {
      // storage unavailable: nothing kept
    }
  });
  setInterval(tick, 1000);

  return { api, errorMessage, el, durationText, localTimes, timeOnly, dateTime };
})();
