"use strict";
// bayesal serve: the labeling page. Plain JavaScript, no dependencies; every request carries the token header.
(function () {
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    sessionStorage.setItem("bayesal-token", params.get("token"));
    history.replaceState(null, "", location.pathname);  // keep the secret out of the address bar
  }
  const token = sessionStorage.getItem("bayesal-token") || "-";
  let clientId = sessionStorage.getItem("bayesal-client");
  if (!clientId) {
    const b = new Uint8Array(12);
    crypto.getRandomValues(b);
    clientId = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem("bayesal-client", clientId);
  }

  const $ = (id) => document.getElementById(id);
  // a thumbnail's address (the browser loads it without the header: the token goes in the query)
  const imageSrc = (src) => (src.startsWith("data:") || token === "-" ? src : `${src}?token=${encodeURIComponent(token)}`);
  // this tab's own answers and skips (newest last), kept across reloads: undo takes back only those
  const mine = JSON.parse(sessionStorage.getItem("bayesal-mine") || "[]");
  const remember = () => sessionStorage.setItem("bayesal-mine", JSON.stringify(mine.slice(-200)));
  const state = { info: null, card: null, busy: false, keyOf: {}, mine, t0: null };
  // answer -> next item rendered, in ms (read by the browser tests and the latency benchmark)
  window.bayesalTimings = [];
  window.bayesalRenders = 0;  // items put on screen so far

  async function api(method, path, body) {
    const opts = { method, headers: { "X-Bayesal-Token": token, "X-Bayesal-Client": clientId } };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(path, opts);
    const type = res.headers.get("Content-Type") || "";
    const data = type.includes("json") ? await res.json() : await res.blob();
    return { ok: res.ok, status: res.status, data };
  }

  function message(text, kind) {
    const m = $("message");
    m.textContent = text || "";
    m.className = kind || "";
  }

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function renderCard(card) {
    state.card = card;
    const c = $("card");
    c.dataset.version = card.version;
    $("undo").disabled = !card.can_undo;
    $("redo").disabled = !card.can_redo;
    const item = $("item");
    item.replaceChildren();
    $("model").replaceChildren();
    $("model").dataset.guess = "";
    document.querySelectorAll("#classes button").forEach((b) => { b.disabled = card.done; b.classList.remove("top"); b.removeAttribute("title"); });
    $("skip").disabled = card.done;
    if (card.done) {
      c.dataset.index = "";
      $("item-meta").textContent = "";
      item.appendChild(el("p", { id: "done" }, "Every item is labeled or skipped. Export the labels above."));
      return;
    }
    c.dataset.index = card.index;
    $("item-meta").textContent = `item #${card.index} · ${card.n_labeled} labeled`;
    const v = card.item;
    if (v.kind === "image") {
      item.appendChild(el("img", { src: imageSrc(v.src), alt: `item #${card.index}` }));
    } else {
      item.appendChild(el("div", { class: "text" }, v.text));
    }
    const model = $("model");
    model.appendChild(el("span", {}, "model:"));
    if (card.no_guess) {
      // no labels, or a uniform prediction: no class is more likely than another, so none is singled out
      model.dataset.guess = "none";
      model.appendChild(el("span", { id: "no-guess" }, `no guess yet (${card.no_guess})`));
      return;
    }
    model.dataset.guess = card.guess.length > 1 ? "tie" : "one";
    card.top.forEach((t) => {
      const p = el("span", { class: "prob" });
      const bar = el("span", { class: "bar" });
      bar.style.width = `${Math.max(2, Math.round(60 * t.p))}px`;
      p.append(el("b", {}, t.label), bar, el("span", {}, `${(100 * t.p).toFixed(0)}%`));
      model.appendChild(p);
    });
    // the most probable class, or every class tied with it: none is singled out by chance
    const title = card.guess.length > 1 ? "tied for the model's guess" : "the model's guess";
    card.guess.forEach((label) => {
      const b = document.querySelector(`#classes button[data-label="${CSS.escape(label)}"]`);
      if (b) { b.classList.add("top"); b.title = title; }
    });
  }

  // while an image is read, the thumbnails of the items likely shown next are fetched into the cache
  const PREFETCH_MS = 250;
  async function prefetch(index) {
    if (!state.card || state.card.index !== index) return;
    try {
      const r = await api("GET", "api/upcoming");
      if (r.ok) r.data.thumbnails.forEach((src) => { new Image().src = imageSrc(src); });
    } catch (err) { /* only a prefetch */ }
  }

  function shown(card) {
    // the next item is on screen: record the latency once the browser has painted it
    renderCard(card);
    const t0 = state.t0;
    state.t0 = null;
    const painted = () => requestAnimationFrame(() => {
      if (t0 !== null) window.bayesalTimings.push(performance.now() - t0);
      window.bayesalRenders += 1;
    });
    // an image counts as shown once it is loaded and decoded (a thumbnail file, usually from the cache)
    const img = card.done ? null : document.querySelector("#item img");
    if (img) img.decode().catch(() => {}).then(painted);
    else painted();
    if (img) setTimeout(() => prefetch(card.index), PREFETCH_MS);
    setTimeout(refreshPanel, 0);  // the panel follows, off the answer's path
  }

  async function act(path, body, okText) {
    if (state.busy) return;
    state.busy = true;
    try {
      const r = await api("POST", path, body);
      if (r.ok) {
        message(okText ? okText(r.data) : "", "ok");
        if (r.data.next) shown(r.data.next);
        return r.data;
      }
      message(r.data.detail || `request failed (${r.status})`, "warn");
      state.t0 = null;
      if (r.data.next) shown(r.data.next);
      return null;
    } catch (err) {
      state.t0 = null;
      message(`the server did not answer (${err}); your last action may not be saved — reload to check`, "warn");
      return null;
    } finally {
      state.busy = false;
    }
  }

  async function answer(label) {
    const card = state.card;
    if (!card || card.done || state.busy) return;
    state.t0 = performance.now();
    const data = await act("/api/answer", { index: card.index, label }, (d) => `#${d.recorded.index} → ${d.recorded.label}`);
    if (data) { state.mine.push(card.index); remember(); }
  }

  async function skip() {
    const card = state.card;
    if (!card || card.done || state.busy) return;
    state.t0 = performance.now();
    const data = await act("/api/skip", { index: card.index }, (d) => `skipped #${d.recorded.index}`);
    if (data) { state.mine.push(card.index); remember(); }
  }

  async function undo() {
    const expect = state.mine.length ? state.mine[state.mine.length - 1] : null;
    const data = await act("/api/undo", { expect_index: expect }, (d) => `undone: ${d.undone.op} #${d.undone.index ?? ""}`);
    if (data && state.mine.length) { state.mine.pop(); remember(); }
  }

  async function redo() {
    const data = await act("/api/redo", {}, (d) => `redone: ${d.redone.op} #${d.redone.index ?? ""}`);
    if (data && data.redone.index !== undefined) { state.mine.push(data.redone.index); remember(); }
  }

  async function retrain() {
    message("retraining the head on all labels …", "");
    await act("/api/retrain", {}, (d) => `retrained on ${d.retrained_on} labels in ${d.seconds}s`);
  }

  async function correct(index, label) {
    await act("/api/correct", { index, label }, (d) => `corrected #${d.recorded.index} → ${d.recorded.label}`);
  }

  async function download(path, name) {
    const r = await api("GET", path);
    if (!r.ok) { message(`export failed (${r.status})`, "warn"); return; }
    const a = el("a", { href: URL.createObjectURL(r.data), download: name });
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  let panelPending = false;
  async function refreshPanel() {
    if (panelPending) return;
    panelPending = true;
    try {
      const r = await api("GET", "/api/panel");
      if (r.ok) renderPanel(r.data);
    } catch (err) {
      /* the next answer refreshes it */
    } finally {
      panelPending = false;
    }
  }

  function renderPanel(data) {
    const s = data.stats;
    const panel = $("panel");
    panel.dataset.version = s.version;
    panel.dataset.labels = s.n_labeled;
    $("summary").textContent = `${s.n_labeled} labeled · ${s.n_skipped} skipped · pool ${s.pool_size}`;
    const max = Math.max(1, ...s.counts.map((c) => c.count));
    const rows = s.counts.map((c) => {
      const tr = el("tr");
      const bar = el("div", { class: "cbar" });
      bar.style.width = `${Math.round(100 * c.count / max)}%`;
      const cell = el("td");
      cell.appendChild(bar);
      tr.append(el("td", {}, c.label), el("td", { class: "n" }, String(c.count)), cell);
      return tr;
    });
    $("counts").replaceChildren(...rows);
    const sig = $("signals");
    sig.replaceChildren();
    // one signal: its name, an explanation shown on hover or keyboard focus, its value
    const line = (id, k, tip, v) => {
      const d = el("div", { id: `signal-${id}` });
      const name = el("span", { class: "name" }, k);
      name.appendChild(el("span", { class: "tip", tabindex: "0", role: "note", "aria-label": tip, "data-tip": tip }, "?"));
      d.append(name, el("b", {}, v));
      sig.appendChild(d);
    };
    if (!s.signals_ready) {
      sig.appendChild(el("p", {}, "Stopping signals start once two classes are labeled."));
    } else {
      const w = s.window_labels;
      line("accuracy", "model's estimate of its accuracy on the pool",
        `The model's own estimate, not a measurement: the mean, over ${s.reference_size} pool items ` +
        (s.reference_size < s.pool_size ? "(a fixed random sample)" : "(the whole pool)") +
        ", of the probability the model gives its most probable class. It is as " +
        "trustworthy as the model's probabilities are calibrated; no true label is used." +
        (s.test_accuracy !== null ? " The held-out accuracy below is measured on the test split's true labels." : ""),
        s.expected_accuracy.toFixed(3));
      if (s.test_accuracy !== null) {
        line("held-out", "held-out accuracy",
          "Accuracy of the model's predictions on the data set's test split, against its true labels.",
          s.test_accuracy.toFixed(3));
      }
      line("gain", `gain per label (last ${w})`,
        `Change of the model's accuracy estimate per label over the last ${w} labels: near zero or below, ` +
        "more labels add little.",
        s.gain_per_label === null ? "n/a" : s.gain_per_label.toFixed(4));
      line("flips", `decision flips (last ${w})`,
        `Pool items (of ${s.reference_size}) whose predicted class changed over the last ${w} labels: ` +
        "near zero, the decisions are stable.",
        `${s.flips} of ${s.reference_size}`);
      const e = s.estimate;
      if (e) {
        const pct = Math.round(100 * e.level);
        line("estimate", `accuracy on the unlabeled pool (${pct}% interval)`,
          e.method === "audit"
            ? `Prediction-powered estimate: the model's own estimate corrected by ${e.n_audit} audit labels ` +
              "(items drawn at random from the pool, predicted before their label was absorbed). The interval is honest."
            : "The model's own estimate with its spread: not honest after uncertainty sampling (the model is " +
              "under- or overconfident on the rest of the pool). Start the session with an audit rate (e.g. 0.1) for an honest one.",
          `${e.accuracy.toFixed(3)} [${e.low.toFixed(3)}, ${e.high.toFixed(3)}]` +
            (e.method === "audit" ? ` · ${e.n_audit} audit` : " · model's own"));
        line("expected-gain", `expected gain of the next ${e.horizon} labels`,
          `At most the accuracy the next ${e.horizon} labels can add: the share of the predictions changed per ` +
          `label over the last ${e.gain_window} labels (the last half), times ${e.horizon}.` +
          (e.stop_threshold === null ? "" : ` Stopping is recommended below ${e.stop_threshold}.`),
          e.expected_gain === null ? `n/a until ${e.gain_window} labels` : e.expected_gain.toFixed(4));
        if (e.stop) {
          line("stop", "stop recommended",
            `The next ${e.horizon} labels are expected to add less than ${e.stop_threshold} accuracy.`, "yes");
        }
      }
    }
    // server-rendered SVG (numbers only, names escaped on the server)
    $("plots").innerHTML = s.plots.accuracy + s.plots.gain + s.plots.flips;
    renderRecent(data.recent);
  }

  function renderRecent(recent) {
    const list = $("recent");
    const items = recent.map((r) => {
      const li = el("li", { "data-index": r.index });
      li.appendChild(el("span", {}, `#${r.index}`));
      if (r.src) li.appendChild(el("img", { src: imageSrc(r.src), alt: `item #${r.index}` }));
      li.appendChild(el("span", { class: "pv" }, r.preview || ""));
      const sel = el("select", { "aria-label": `label of item #${r.index}` });
      for (const c of state.info.classes) {
        const o = el("option", { value: c.label }, c.label);
        if (c.label === r.label) o.selected = true;
        sel.appendChild(o);
      }
      sel.addEventListener("change", () => { sel.blur(); correct(r.index, sel.value); });  // keys go back to labeling
      li.appendChild(sel);
      return li;
    });
    list.replaceChildren(...items);
  }

  async function addClass() {
    const input = $("new-class");
    const name = input.value.trim();
    if (!name || state.busy) return;
    state.busy = true;
    try {
      const r = await api("POST", "/api/classes", { label: name });
      if (!r.ok) { message(r.data.detail || `request failed (${r.status})`, "warn"); return; }
      input.value = "";
      input.blur();  // keys go back to labeling
      state.info = r.data.info;
      state.keyOf = {};
      buildClasses(r.data.info);
      shown(r.data.next);
      message(`added class ${r.data.recorded.label}`);
    } finally {
      state.busy = false;
    }
  }

  function buildClasses(info) {
    const box = $("classes");
    box.replaceChildren();
    info.classes.forEach((c) => {
      const b = el("button", { "data-label": c.label });
      if (c.key) { b.append(el("kbd", {}, c.key), document.createTextNode(" ")); state.keyOf[c.key] = c.label; }
      b.append(document.createTextNode(c.label));
      // blur: a focused button would answer the next item again on Space or Enter
      b.addEventListener("click", () => { b.blur(); answer(c.label); });
      box.appendChild(b);
    });
  }

  document.addEventListener("keydown", (ev) => {
    if (document.body.dataset.view === "review") return;  // the Review view has its own keys (review.js)
    const tag = (ev.target && ev.target.tagName) || "";
    if (tag === "SELECT" || tag === "INPUT" || tag === "TEXTAREA" || ev.altKey || ev.metaKey) return;
    const k = ev.key.toLowerCase();
    if (ev.ctrlKey) {
      if (k === "z") { ev.preventDefault(); undo(); } else if (k === "y") { ev.preventDefault(); redo(); }
      return;
    }
    if (k === "u") undo();
    else if (k === "y") redo();
    else if (k === "s") skip();
    else if (state.keyOf[k] !== undefined) answer(state.keyOf[k]);
    else return;
    ev.preventDefault();
  });

  async function start() {
    const info = await api("GET", "/api/info");
    if (!info.ok) { message(info.data.detail || `the server refused (${info.status})`, "warn"); return; }
    state.info = info.data;
    buildClasses(info.data);
    const blurred = (fn) => (ev) => { ev.currentTarget.blur(); fn(); };
    $("undo").addEventListener("click", blurred(undo));
    $("redo").addEventListener("click", blurred(redo));
    $("retrain").addEventListener("click", blurred(retrain));
    $("skip").addEventListener("click", blurred(skip));
    $("add-class").addEventListener("click", blurred(addClass));
    $("new-class").addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.preventDefault(); addClass(); } });
    $("export-csv").addEventListener("click", () => download("/api/export/labels.csv", "labels.csv"));
    $("export-jsonl").addEventListener("click", () => download("/api/export/labels.jsonl", "labels.jsonl"));
    $("export-posterior").addEventListener("click", () => download("/api/export/posterior.pt", "posterior.pt"));
    const r = await api("GET", "/api/next");
    if (r.ok) shown(r.data); else message(r.data.detail || `request failed (${r.status})`, "warn");
    document.body.dataset.ready = "1";
    // other tabs and people label too: refresh the panel now and then (only while this tab is visible)
    setInterval(() => { if (!document.hidden && !state.busy) refreshPanel(); }, 5000);
  }

  start();
})();
