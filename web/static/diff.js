// The task's diff: drawn by diff2html (unified or side by side, highlighted by highlight.js), a file tree, and
// comments on lines that gather into a review (kept in this browser until sent with a follow-up).
"use strict";

const Diff = (() => {
  const { el } = Overnight;
  const MAX_LINES = 20000;
  const FIRST_LINES = 200;
  /** Changed lines drawn before the page is handed back to the reader; the other files follow when it is idle. */
  const idle = window.requestIdleCallback ? (work) => window.requestIdleCallback(work, { timeout: 250 }) : (work) => setTimeout(() => work({ timeRemaining: () => 10 }), 16);

  class Review {
    constructor(taskId, onChange) {
      this.key = `overnight-review-${taskId}`;
      this.onChange = onChange;
      try {
        this.items = JSON.parse(localStorage.getItem(this.key) || "[]");
      } catch (error) {
        this.items = [];
      }
    }

    save() {
      try {
        localStorage.setItem(this.key, JSON.stringify(this.items));
      } catch (error) {
        // private mode: the review lives as long as the page
      }
      this.onChange?.(this);
    }

    add(comment) {
      this.items.push({ id: `${Date.now()}-${Math.random().toString(16).slice(2, 8)}`, ...comment });
      this.save();
    }

    remove(id) {
      this.items = this.items.filter((item) => item.id !== id);
      this.save();
    }

    clear() {
      this.items = [];
      this.save();
    }

    static where(item) {
      return item.side === "old" ? `in \`${item.path}\` removed line ${item.line} (old numbering)` : `in \`${item.path}\` line ${item.line}`;
    }

    /** The review as the follow-up's text: one line per comment ("in `api/x.py` line 42: ..."). */
    text() {
      const lines = this.items.map((item) => `- ${Review.where(item)}: ${item.text.trim().replace(/\n/g, "\n  ")}`);
      return lines.length ? `Review comments on the diff:\n${lines.join("\n")}` : "";
    }
  }

  const filePath = (file) => (file.newName && file.newName !== "/dev/null" ? file.newName : file.oldName);

  function fileStatus(file) {
    if (file.isNew) return "added";
    if (file.isDeleted) return "deleted";
    if (file.isRename) return `renamed from ${file.oldName}`;
    if (file.isBinary) return "binary";
    return "";
  }

  /** Nested folders of the files' paths, a folder with a single folder inside shown as one ("a/b/"). */
  function tree(files) {
    const root = { dirs: new Map(), files: [] };
    files.forEach((file, index) => {
      const parts = filePath(file).split("/");
      let node = root;
      for (const part of parts.slice(0, -1)) {
        if (!node.dirs.has(part)) node.dirs.set(part, { dirs: new Map(), files: [] });
        node = node.dirs.get(part);
      }
      node.files.push({ name: parts[parts.length - 1], file, index });
    });
    return root;
  }

  function treeList(node, onPick) {
    const list = el("ul");
    for (let [name, child] of node.dirs) {
      while (child.files.length === 0 && child.dirs.size === 1) {
        const [next, grandchild] = [...child.dirs][0];
        name = `${name}/${next}`;
        child = grandchild;
      }
      list.append(el("li", {}, el("span", { class: "dir" }, `${name}/`), treeList(child, onPick)));
    }
    for (const { name, file, index } of node.files) {
      const link = el("a", { href: `#diff-file-${index}`, title: filePath(file) }, name);
      link.addEventListener("click", (event) => {
        event.preventDefault();
        onPick(index);
      });
      const status = fileStatus(file);
      list.append(el("li", {}, link,
        el("span", { class: "stat" }, el("span", { class: "added" }, `+${file.addedLines}`), " ", el("span", { class: "removed" }, `−${file.deletedLines}`)),
        status ? el("span", { class: "sub" }, ` ${status}`) : null));
    }
    return list;
  }

  class DiffView {
    constructor({ taskId, container, tree: treeNode, toolbar, notes, help, count, review }) {
      Object.assign(this, { taskId, container, treeNode, toolbar, notes, help, count, review });
      this.files = [];
      this.loaded = false;
      this.url = `/v1/tasks/${encodeURIComponent(taskId)}/patch?format=json`;
      this.commentable = true;
      toolbar.addEventListener("change", (event) => { if (event.target.name === "diff-view") this.draw(); });
      container.addEventListener("click", (event) => this.onClick(event));
      container.addEventListener("keydown", (event) => this.onKey(event));
    }

    message(text) {
      this.container.replaceChildren(el("p", { class: "muted" }, text));
    }

    async load() {
      if (this.loading) return this.loading;
      this.loading = this.fetchAndDraw();
      return this.loading;
    }

    /** Show another patch (an attempt's, ``url`` its JSON); comments on lines only where ``commentable`` (the
     * task's own patch, which a follow-up starts from). */
    source(url, commentable) {
      if (url !== this.url || commentable !== this.commentable) {
        Object.assign(this, { url, commentable, loaded: false, loading: null, patch: null, files: [] });
        this.generation = (this.generation || 0) + 1;
        this.closeEditor();
        this.treeNode.replaceChildren();
        this.notes.replaceChildren();
        this.count.textContent = "";
        this.toolbar.hidden = true;
        this.help.hidden = true;
        this.message("Loading the patch…");
      }
      return this.load();
    }

    async fetchAndDraw() {
      const url = this.url;
      const result = await Overnight.api("GET", url);
      if (url !== this.url) return false; // another patch was chosen meanwhile
      if (!result.ok) {
        this.loading = null; // asked again later (the task ends, the API comes back)
        if (result.status === 409) this.message("The patch appears here when the task ends.");
        else if (result.status === 404) this.message("This task ended without a patch.");
        else this.message(Overnight.errorMessage(result));
        return false;
      }
      this.loaded = true;
      this.patch = result.data;
      this.files = this.patch.diff && window.Diff2Html ? window.Diff2Html.parse(this.patch.diff) : [];
      this.showNotes();
      this.toolbar.hidden = !this.patch.diff;
      this.draw();
      return true;
    }

    showNotes() {
      const patch = this.patch;
      const added = this.files.reduce((sum, file) => sum + file.addedLines, 0);
      const removed = this.files.reduce((sum, file) => sum + file.deletedLines, 0);
      this.count.textContent = patch.diff ? `+${added} −${removed}` : "";
      const notes = [];
      if (patch.body) {
        notes.push(el("details", {}, el("summary", {}, el("strong", {}, patch.title || "Description"), patch.title ? " — description" : ""), el("div", { class: "content wrap" }, patch.body)));
      } else if (patch.title) {
        notes.push(el("h2", {}, patch.title));
      }
      if (!patch.complete) notes.push(el("p", { class: "notice warn" }, "Incomplete: the run ended early (a budget or a cancel); this is what was done so far."));
      if (!patch.diff) notes.push(el("p", { class: "notice" }, "The task found no changes to make."));
      if (patch.excluded?.length) {
        notes.push(el("details", { class: "excluded" }, el("summary", {}, `Files the patch left out (${patch.excluded.length}): caches, dependencies, build output`),
          el("ul", {}, patch.excluded.map((path) => el("li", {}, el("code", {}, path))))));
      }
      this.notes.replaceChildren(...notes);
    }

    view() {
      return this.toolbar.querySelector("input[name=diff-view]:checked")?.value || "line-by-line";
    }

    draw() {
      if (!this.patch?.diff) return this.container.replaceChildren();
      if (!window.Diff2HtmlUI) {
        this.container.replaceChildren(el("p", { class: "notice warn" }, "The diff viewer's files are missing on the server (run bash infra/setup-host.sh); the plain diff follows."), el("pre", {}, this.patch.diff));
        return;
      }
      this.treeNode.replaceChildren(el("h2", { class: "visually-hidden" }, "Files"), treeList(tree(this.files), (index) => this.showFile(index)));
      const lines = this.files.reduce((sum, file) => sum + file.addedLines + file.deletedLines, 0);
      if (lines > MAX_LINES) {
        this.container.replaceChildren(el("p", { class: "notice warn" }, `This patch changes ${lines} lines, too many to show here; download it above.`));
        return;
      }
      // One slot per file, drawn and highlighted one file at a time: the first files at once (what the reader
      // sees first), the rest when the browser is idle, so a long patch never blocks the page for seconds.
      const generation = (this.generation = (this.generation || 0) + 1);
      this.slots = this.files.map((_, index) => el("div", { class: "diff-file", id: `diff-file-${index}`, tabindex: -1 }));
      this.container.replaceChildren(...this.slots);
      delete this.container.dataset.drawn;
      this.pending = this.files.map((_, index) => index);
      let budget = FIRST_LINES;
      while (this.pending.length && budget > 0) {
        const index = this.pending.shift();
        budget -= this.files[index].addedLines + this.files[index].deletedLines;
        this.drawFile(index);
      }
      const more = (deadline) => {
        if (generation !== this.generation) return; // redrawn since (the other view was chosen)
        do {
          if (this.pending.length) this.drawFile(this.pending.shift());
        } while (this.pending.length && deadline.timeRemaining() > 8);
        if (this.pending.length) idle(more); else this.container.dataset.drawn = "all";
      };
      if (this.pending.length) idle(more); else this.container.dataset.drawn = "all";
      this.help.hidden = !this.commentable;
    }

    drawFile(index) {
      const slot = this.slots[index];
      if (!slot || slot.dataset.drawn) return;
      slot.dataset.drawn = "true";
      this.pending = this.pending.filter((other) => other !== index);
      const ui = new window.Diff2HtmlUI(slot, [this.files[index]], {
        outputFormat: this.view(), drawFileList: false, matching: "none", highlight: true, fileContentToggle: true,
        stickyFileHeaders: false, synchronisedScroll: true, colorScheme: "auto",
      });
      ui.draw();
      ui.highlightCode();
      this.decorate(slot, index);
      this.showComments(filePath(this.files[index]));
    }

    showFile(index) {
      this.drawFile(index);
      const slot = this.slots?.[index];
      if (!slot) return;
      slot.scrollIntoView({ block: "start" });
      slot.focus({ preventScroll: true });
    }

    /** Marks each line-number cell of a file with its path, side and line so it can take a comment. */
    decorate(slot, index) {
      if (!this.commentable) return;
      const path = filePath(this.files[index] || {});
      const sides = slot.querySelectorAll(".d2h-file-side-diff");
      let first = null;
      const mark = (cell, side, line) => {
        if (!/^\d+$/.test(line)) return;
        Object.assign(cell.dataset, { path, side, line });
        cell.tabIndex = -1;
        cell.setAttribute("role", "button");
        first = first || cell;
      };
      if (sides.length === 2) {
        sides.forEach((pane, which) => {
          for (const cell of pane.querySelectorAll("td.d2h-code-side-linenumber:not(.d2h-info)")) mark(cell, which ? "new" : "old", cell.textContent.trim());
        });
      } else {
        for (const cell of slot.querySelectorAll("td.d2h-code-linenumber:not(.d2h-info)")) {
          const next = cell.querySelector(".line-num2")?.textContent.trim();
          if (next) mark(cell, "new", next); else mark(cell, "old", cell.querySelector(".line-num1")?.textContent.trim() || "");
        }
      }
      if (first) first.tabIndex = 0;
    }

    cellFor(item) {
      const selector = `[data-path="${CSS.escape(item.path)}"][data-side="${item.side}"][data-line="${item.line}"]`;
      return this.container.querySelector(selector);
    }

    onClick(event) {
      const remove = event.target.closest("[data-remove-comment]");
      if (remove) return this.review.remove(remove.dataset.removeComment);
      const cell = event.target.closest("td[data-line]");
      if (cell && this.commentable) this.openEditor(cell);
    }

    onKey(event) {
      const cell = event.target.closest?.("td[data-line]");
      if (!cell || event.target !== cell) return;
      if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        event.preventDefault();
        const cells = [...cell.closest("table").querySelectorAll("td[data-line]")];
        const next = cells[cells.indexOf(cell) + (event.key === "ArrowDown" ? 1 : -1)];
        if (next) {
          cell.tabIndex = -1;
          next.tabIndex = 0;
          next.focus();
        }
      } else if (event.key === "Enter" || event.key === " " || event.key === "c") {
        event.preventDefault();
        this.openEditor(cell);
      }
    }

    /** A row under ``row`` (and an empty one beside it in the other pane, so side-by-side rows stay aligned). */
    insertRow(row, content, className) {
      const added = el("tr", { class: `comment-row ${className}` }, el("td", { colspan: row.cells.length || 2 }, content));
      row.after(added);
      const pane = row.closest(".d2h-file-side-diff");
      const other = pane && [...pane.parentElement.children].find((node) => node !== pane && node.classList.contains("d2h-file-side-diff"));
      const twin = other?.querySelector("tbody")?.rows[row.sectionRowIndex];
      if (twin) {
        const spacer = el("tr", { class: `comment-row comment-spacer ${className}`, "aria-hidden": "true" }, el("td", { colspan: twin.cells.length || 2 }));
        twin.after(spacer);
        const sync = () => { spacer.style.height = `${added.offsetHeight}px`; };
        new ResizeObserver(sync).observe(added);
        sync();
      }
      return added;
    }

    closeEditor() {
      this.container.querySelectorAll(".comment-editor").forEach((row) => row.remove());
    }

    openEditor(cell) {
      this.closeEditor();
      const item = { path: cell.dataset.path, side: cell.dataset.side, line: Number(cell.dataset.line) };
      const id = `comment-${Date.now()}`;
      const text = el("textarea", { id, rows: 3 });
      const add = el("button", { type: "button", class: "primary" }, "Add comment");
      const cancel = el("button", { type: "button" }, "Cancel");
      const box = el("div", { class: "comment-box" }, el("label", { for: id }, `Comment ${Review.where(item)}`), text, el("div", { class: "buttons" }, add, cancel));
      this.insertRow(cell.closest("tr"), box, "comment-editor");
      const close = () => { this.closeEditor(); cell.focus(); };
      add.addEventListener("click", () => {
        if (!text.value.trim()) return text.focus();
        this.review.add({ ...item, text: text.value });
        close();
      });
      cancel.addEventListener("click", close);
      box.addEventListener("keydown", (event) => {
        if (event.key === "Escape") close();
        if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) add.click();
      });
      text.focus();
    }

    /** The saved comments under their lines (of one file, or of every file drawn). */
    showComments(path = null) {
      const items = this.commentable ? this.review.items.filter((item) => path === null || item.path === path) : [];
      if (path === null) this.container.querySelectorAll(".comment-saved").forEach((row) => row.remove());
      for (const item of items) {
        const cell = this.cellFor(item);
        if (!cell) continue;
        const remove = el("button", { type: "button", "data-remove-comment": item.id, "aria-label": `Remove the comment ${Review.where(item)}` }, "Remove");
        this.insertRow(cell.closest("tr"), el("div", { class: "comment-box" }, el("div", { class: "saved" }, item.text), el("div", { class: "buttons" }, remove)), "comment-saved");
      }
    }

    focusComment(item) {
      const index = this.files.findIndex((file) => filePath(file) === item.path);
      if (index >= 0) this.drawFile(index);
      const cell = this.cellFor(item);
      if (!cell) return;
      cell.scrollIntoView({ block: "center" });
      cell.focus({ preventScroll: true });
    }
  }

  return { DiffView, Review };
})();
