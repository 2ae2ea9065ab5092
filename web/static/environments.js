// The environments' pages: every change goes through the API (/v1/environments) with the session's CSRF token,
// then the page is read again from the server, which never has a secret's value to show. A secret's value
// leaves the form as soon as it is sent, whatever the answer.
"use strict";

(() => {
  const { api, errorMessage } = Overnight;
  const SAVED = "overnight-environment-saved";
  const root = document.getElementById("environment");
  const status = document.getElementById("environment-status");

  function say(text, isError) {
    if (!status) return;
    status.textContent = text;
    status.hidden = !text;
    status.classList.toggle("error", Boolean(isError));
  }

  function savedThenReload(what) {
    try {
      sessionStorage.setItem(SAVED, what);
    } catch (error) {
      // no storage: the page reloads without the note
    }
    location.reload();
  }

  function showSaved() {
    let what = null;
    try {
      what = sessionStorage.getItem(SAVED);
      sessionStorage.removeItem(SAVED);
    } catch (error) {
      what = null;
    }
    if (what) say(`Saved: ${what}.`, false);
  }

  /** Runs one change; on success the page is read again, else the API's message is shown. */
  async function change(button, what, method, url, body) {
    if (button) button.disabled = true;
    say("Saving…", false);
    const result = await api(method, url, body);
    if (button) button.disabled = false;
    if (result.ok) {
      savedThenReload(what);
      return true;
    }
    say(errorMessage(result), true);
    return false;
  }

  function setEnvironment(button, what, fields) {
    return change(button, what, "POST", "/v1/environments", { pattern: root.dataset.pattern, ...fields });
  }

  function policyOf(form) {
    const mode = form.elements.mode.value;
    if (mode !== "allowlist") return { mode };
    const domains = form.elements.domains.value.split(/[\s,]+/).map((d) => d.trim()).filter(Boolean);
    return { mode, domains, read_only: form.elements.read_only.checked };
  }

  function wireEnvironment() {
    const id = encodeURIComponent(root.dataset.id);
    for (const form of document.querySelectorAll(".policy-form")) {
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const field = form.dataset.field;
        const label = field === "agent_network" ? "the agent network" : "the set-up network";
        setEnvironment(form.querySelector("button[type=submit]"), label, { [field]: policyOf(form) });
      });
    }
    document.getElementById("variable-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const form = event.currentTarget;
      const name = form.elements.name.value.trim();
      setEnvironment(form.querySelector("button"), `variable ${name}`, { variables: { [name]: form.elements.value.value } });
    });
    const secretForm = document.getElementById("secret-form");
    secretForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const name = secretForm.elements.name.value.trim();
      const value = secretForm.elements.value.value;
      secretForm.elements.value.value = ""; // the value leaves the page now, whatever the answer
      change(secretForm.querySelector("button"), `secret ${name}`, "PUT", `/v1/environments/${id}/secrets/${encodeURIComponent(name)}`, { value });
    });
    document.getElementById("script-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const form = event.currentTarget;
      setEnvironment(form.querySelector("button[type=submit]"), "the set-up script", { setup_script: form.elements.setup_script.value });
    });
    document.getElementById("script-remove")?.addEventListener("click", (event) => {
      setEnvironment(event.currentTarget, "the set-up script removed", { setup_script: null });
    });
    document.getElementById("owners-form")?.addEventListener("submit", (event) => {
      event.preventDefault();
      const form = event.currentTarget;
      const owners = form.elements.owners.value.split(/[\s,]+/).filter(Boolean);
      setEnvironment(form.querySelector("button"), "the owners", { owners });
    });
    document.addEventListener("click", (event) => {
      const variable = event.target.closest("[data-remove-variable]");
      if (variable) {
        const name = variable.dataset.removeVariable;
        setEnvironment(variable, `variable ${name} removed`, { variables: { [name]: null } });
      }
      const secret = event.target.closest("[data-remove-secret]");
      if (secret) {
        const name = secret.dataset.removeSecret;
        change(secret, `secret ${name} removed`, "DELETE", `/v1/environments/${id}/secrets/${encodeURIComponent(name)}`);
      }
    });
    showSaved();
  }

  function wireList() {
    const form = document.getElementById("environment-create");
    if (!form) return;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector("button");
      button.disabled = true;
      const result = await api("POST", "/v1/environments", { pattern: form.elements.pattern.value.trim() });
      button.disabled = false;
      if (result.ok && Number.isInteger(result.data?.id)) {
        location.assign(`/environments/${result.data.id}`);
        return;
      }
      say(result.ok ? "Created; reload the page to see it." : errorMessage(result), true);
    });
  }

  if (root) wireEnvironment(); else wireList();
})();
