"use strict";
// bayesal serve: the Review view. Labeled items whose given label the model doubts most (from all the
// other labels), one at a time: Enter keeps the label, a class key corrects it (the session's correct event).
(function () {
  const token = sessionStorage.getItem("bayesal-token") || "-";
  const $ = (id) => document.getElementById(id);
  // a thumbnail's address (the browser loads it without the header: the token goes in the query)
  const imageSrc = (src) => (src.startsWith("data:") || token === "-" ? src : `${src}?token=${encodeURIComponent(token)}`);
  const st = { info: null, card: null, busy: false, keyOf: {} };
  window.bayesalReviewRenders = 0;  // review cards put on screen so far (read by the browser tests)

  async function api(method, path, body) {
    const headers = { "X-Bayesal-Token": token, "X-Bayesal-Client": sessionStorage.getItem("bayesal-client") || "" };
    const opts = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(path, opts);
    return { ok: res.ok, status: res.status, data: await res.json() };
  }

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function message(text, kind) {
    const m = $("review-message");
    m.textContent = text || "";
    m.className = kind || "";
  }

  function render(card) {
    st.card = card;
    const item = $("review-item");
    item.replaceChildren();
    $("review-model").replaceChildren();
    $("review-label").replaceChildren();
    document.querySelectorAll("#review-classes button").forEach((b) => {
      b.disabled = card.done;
      b.classList.remove("given", "top");
    });
    $("review-keep").disabled = card.done;
    $("review-card").dataset.index = card.done ? "" : card.index;
    if (card.done) {
      $("review-meta").textContent = `${card.n_labeled} labeled · ${card.n_kept} kept`;
      item.appendChild(el("p", { id: "review-done" }, "No label left to review."));
    } else {
      $("review-meta").textContent =
        `item #${card.index} · doubt ${(100 * card.doubt).toFixed(0)}% · ${card.n_labeled} labeled · ${card.n_kept} kept`;
      const v = card.item;
      if (v.kind === "image") item.appendChild(el("img", { src: imageSrc(v.src), alt: `item #${card.index}` }));
      else item.appendChild(el("div", { class: "text" }, v.text));
      const given = el("span", {}, "given label: ");
      given.appendChild(el("b", { id: "review-given" }, card.label));
      $("review-label").appendChild(given);
      const model = $("review-model");
      model.appendChild(el("span", {}, "model, from the other labels:"));
      card.top.forEach((t) => {
        model.appendChild(el("span", { class: "prob" }, `${t.label} ${(100 * t.p).toFixed(0)}%`));
      });
      const mark = (label, cls) => {
        const b = document.querySelector(`#review-classes button[data-label="${CSS.escape(label)}"]`);
        if (b) b.classList.add(cls);
      };
      mark(card.label, "given");
      card.guess.forEach((label) => mark(label, "top"));
    }
    requestAnimationFrame(() => { window.bayesalReviewRenders += 1; });
  }

  async function request(method, path, body, okText) {
    if (st.busy) return null;
    st.busy = true;
    try {
      const r = await api(method, path, body);
      if (!r.ok) {
        message(r.data.detail || `request failed (${r.status})`, "warn");
        return null;
      }
      if (okText) message(okText(r.data), "ok");
      return r.data;
    } catch (err) {
      message(`the server did not answer (${err}); reload to check`, "warn");
      return null;
    } finally {
      st.busy = false;
    }
  }

  async function load() {
    const data = await request("GET", "/api/review/next");
    if (data) render(data);
  }

  async function keep() {
    const card = st.card;
    if (!card || card.done) return;
    const data = await request("POST", "/api/review/keep", { index: card.index }, (d) => `kept #${d.kept} as ${card.label}`);
    if (data) render(data.next);
  }

  async function correct(label) {
    const card = st.card;
    if (!card || card.done) return;
    if (label === card.label) { await keep(); return; }
    let text = "";
    const data = await request("POST", "/api/correct", { index: card.index, label },
      (d) => (text = `corrected #${d.recorded.index} → ${d.recorded.label}`));
    if (!data) return;
    // the corrected label is the reviewer's own verdict: it is not asked about again
    const kept = await request("POST", "/api/review/keep", { index: card.index }, () => text);
    if (kept) render(kept.next); else await load();
  }

  function open() {
    document.body.dataset.view = "review";
    $("labeling").hidden = true;
    $("review").hidden = false;
    message("");
    load();
  }

  function close() {
    document.body.dataset.view = "";
    $("review").hidden = true;
    $("labeling").hidden = false;
  }

  document.addEventListener("keydown", (ev) => {
    if (document.body.dataset.view !== "review" || ev.altKey || ev.metaKey || ev.ctrlKey) return;
    const k = ev.key.toLowerCase();
    if (k === "escape") close();
    else if (k === "enter") keep();
    else if (st.keyOf[k] !== undefined) correct(st.keyOf[k]);
    else return;
    ev.preventDefault();
  });

  async function start() {
    const info = await api("GET", "/api/info");
    if (!info.ok) return;  // the labeling view reports why
    st.info = info.data;
    const box = $("review-classes");
    info.data.classes.forEach((c) => {
      const b = el("button", { "data-label": c.label });
      if (c.key) { b.append(el("kbd", {}, c.key), document.createTextNode(" ")); st.keyOf[c.key] = c.label; }
      b.append(document.createTextNode(c.label));
      b.addEventListener("click", () => { b.blur(); correct(c.label); });
      box.appendChild(b);
    });
    const blurred = (fn) => (ev) => { ev.currentTarget.blur(); fn(); };
    $("review-open").addEventListener("click", blurred(open));
    $("review-close").addEventListener("click", blurred(close));
    $("review-keep").addEventListener("click", blurred(keep));
    document.body.dataset.reviewReady = "1";
  }

  start();
})();
