// The new-task form posts to the API itself (POST /v1/tasks) and shows the API's own validation errors next
// to the field each concerns; the Idempotency-Key of the form makes a double submit file one task. With images
// chosen it posts multipart/form-data: the same JSON as the "task" part, each file an "image" part.
"use strict";

(() => {
  const form = document.getElementById("new-task");
  if (!form) return;
  const FIELDS = ["repo", "ref", "instruction", "max_steps", "attempts", "setup", "images"]
    .filter((name) => document.getElementById(name)); // "images" only when the server takes images
  const CODE_FIELDS = {
    repository_forbidden: "repo", invalid_repo: "repo", invalid_local_changes: "ref",
    not_an_image: "images", image_too_large: "images", too_many_images: "images", images_disabled: "images",
  };
  const formError = document.getElementById("form-error");

  function clearErrors() {
    formError.hidden = true;
    formError.textContent = "";
    for (const name of FIELDS) {
      document.getElementById(`${name}-error`).textContent = "";
      document.getElementById(name).removeAttribute("aria-invalid");
    }
  }

  function showErrors(result) {
    const error = result.data?.error;
    const details = error?.details?.length ? error.details : [{ field: CODE_FIELDS[error?.code] || "", message: Overnight.errorMessage(result) }];
    const general = [];
    let first = null;
    for (const detail of details) {
      const field = String(detail.field || "").split(".")[0];
      const name = /^image/.test(field) ? "images" : field; // image[0], image_urls.1: the images field
      if (FIELDS.includes(name)) {
        const slot = document.getElementById(`${name}-error`);
        slot.textContent = slot.textContent ? `${slot.textContent} ${detail.message}` : detail.message;
        const input = document.getElementById(name);
        input.setAttribute("aria-invalid", "true");
        first = first || input;
      } else {
        general.push(detail.message);
      }
    }
    if (general.length || !first) {
      formError.textContent = general.join(" ") || Overnight.errorMessage(result);
      formError.hidden = false;
    }
    if (first) {
      first.focus();
    } else {
      formError.setAttribute("tabindex", "-1");
      formError.focus();
    }
  }

  function body() {
    const value = (name) => form.elements[name].value;
    const payload = { repo: value("repo").trim(), instruction: value("instruction") };
    if (value("ref").trim()) payload.ref = value("ref").trim();
    if (value("setup").trim()) payload.setup = value("setup").trim();
    const steps = value("max_steps").trim();
    if (steps) payload.max_steps = /^\d+$/.test(steps) ? Number(steps) : steps; // the API says what is wrong
    const attempts = value("attempts").trim();
    if (attempts) payload.attempts = /^\d+$/.test(attempts) ? Number(attempts) : attempts; // 1..8: the API's check
    const files = form.elements.images ? Array.from(form.elements.images.files) : [];
    if (!files.length) return payload;
    const data = new FormData();
    data.append("task", JSON.stringify(payload));
    for (const file of files) data.append("image", file, file.name);
    return data;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    const key = form.elements.idempotency_key.value;
    const result = await Overnight.api("POST", "/v1/tasks", body(), { "Idempotency-Key": key });
    button.disabled = false;
    if (result.ok && result.data?.id) {
      window.location.assign(`/tasks/${encodeURIComponent(result.data.id)}`);
      return;
    }
    showErrors(result);
  });
})();
