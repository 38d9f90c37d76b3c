// saelab feature browser. Reads window.SAELAB_META and window.SAELAB_LATENTS (loaded by
// index.html), loads a latent's data chunk (data/chunk_NNNN.js) when its panel opens and the
// search index (data/search.js) on the first search, through <script> tags: file:// pages
// may not use the fetch API. Every data string goes into the DOM as text (textContent), never as
// HTML: tokens are source code full of <, & and quotes.
"use strict";

(function () {
  const META = window.SAELAB_META;
  const LAT = window.SAELAB_LATENTS;
  const PAGE = 200;
  const state = { sort: "id", desc: false, filter: "all", page: 0, subset: null, query: "", selected: null };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  function fmt(v, digits) {
    if (v === 0) return "0";
    if (Math.abs(v) >= 0.01 && Math.abs(v) < 1e5) return v.toPrecision(digits || 3).replace(/\.?0+$/, "");
    return v.toExponential((digits || 3) - 1);
  }
  const pct = (v) => (v === 0 ? "0" : fmt(100 * v, 3) + "%");
  // Whitespace made visible in chips (leading spaces are part of BPE tokens).
  const visible = (t) => t.replace(/ /g, "\u2423").replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192");
  // In contexts keep spaces (code indentation) but keep each context on one line.
  const inline = (t) => t.replace(/\n/g, "\u21b5").replace(/\t/g, "    ");

  const n = LAT.density.length;
  const isDead = (i) => LAT.density[i] === 0;
  const isDense = (i) => LAT.density[i] > META.high_frequency;
  const topToken = (i) => (LAT.top[i] >= 0 ? LAT.vocab[LAT.top[i]] : "");

  function flags(i) {
    const span = el("span");
    if (isDead(i)) span.append(el("span", { class: "flag dead", title: "never fired on the scanned tokens", text: "dead" }));
    if (isDense(i)) span.append(el("span", { class: "flag dense", title: "fires on more than 10% of tokens", text: ">10%" }));
    return span;
  }

  // ---- header ---------------------------------------------------------------------------
  function header() {
    const s = META.summary;
    const info = document.getElementById("run-info");
    info.append(
      el("div", {}, `model ${META.model} \u00b7 site ${META.site} \u00b7 layer ${META.layer} \u00b7 ` +
        `${META.architecture} SAE, d_in ${META.d_in}, ${META.d_sae.toLocaleString("en")} latents`),
      el("div", { id: "scan-info" }, `Scanned ${META.tokens.toLocaleString("en")} tokens of held-out text ` +
        `(validation split, ${META.contexts.toLocaleString("en")} contexts of ${META.context_length}; BOS/EOS/padding excluded) \u00b7 ` +
        `${s.dead} dead (${pct(s.dead / META.d_sae)}), ${s.dense_1pct} above 1%, ${s.dense_10pct} above 10% density`),
      el("div", { class: "note" }, `SAE: ${META.sae} \u00b7 written ${META.created}`));
    const ev = document.getElementById("eval-info");
    if (META.eval) {
      const keys = [["tokens", "eval tokens"], ["l0", "L0"], ["fvu", "FVU"], ["delta_lm_loss", "\u0394 LM loss"],
        ["ce_loss_recovered", "CE recovered"], ["kl_div", "KL"], ["dead_fraction", "dead"], ["dense_10pct_fraction", ">10%"]];
      const row1 = el("tr"), row2 = el("tr");
      for (const [k, label] of keys) {
        if (typeof META.eval[k] !== "number") continue;
        row1.append(el("th", { text: label }));
        const v = META.eval[k];
        row2.append(el("td", { text: k === "tokens" ? v.toLocaleString("en") : k.endsWith("_fraction") ? pct(v) : fmt(v, 4) }));
      }
      ev.append(el("table", {}, row1, row2));
    }
    if (META.links.length) {
      const links = el("div", {}, "Run: ");
      META.links.forEach((l, j) => { if (j) links.append(" \u00b7 "); links.append(el("a", { href: l.href, text: l.label })); });
      ev.append(links);
    }
  }

  // ---- table ----------------------------------------------------------------------------
  function rows() {
    let ids = state.subset ? state.subset.slice() : Array.from({ length: n }, (_, i) => i);
    if (state.filter === "live") ids = ids.filter((i) => !isDead(i));
    if (state.filter === "dead") ids = ids.filter(isDead);
    if (state.filter === "dense") ids = ids.filter(isDense);
    if (!(state.subset && state.sort === "id")) {
      const key = state.sort === "id" ? null : LAT[state.sort];
      ids.sort((a, b) => (key ? key[a] - key[b] || a - b : a - b) * (state.desc ? -1 : 1));
    }
    return ids;
  }

  function renderTable() {
    const ids = rows();
    const pages = Math.max(1, Math.ceil(ids.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    const body = document.querySelector("#latent-table tbody");
    body.replaceChildren();
    for (const i of ids.slice(state.page * PAGE, (state.page + 1) * PAGE)) {
      const tr = el("tr", { "data-latent": i, onclick: () => select(i) },
        el("td", { class: "num", text: i }),
        el("td", { class: "num", text: pct(LAT.density[i]) }),
        el("td", { class: "num", text: fmt(LAT.max[i]) }),
        el("td", { class: "num", text: fmt(LAT.mean[i]) }),
        el("td", {}, ...(LAT.top[i] >= 0 ? [el("span", { class: "chip", text: visible(topToken(i)) })] : [])),
        el("td", {}, flags(i)));
      if (i === state.selected) tr.className = "selected";
      body.append(tr);
    }
    document.querySelectorAll("#latent-table th[data-key]").forEach((th) => {
      th.classList.toggle("sorted-asc", th.dataset.key === state.sort && !state.desc);
      th.classList.toggle("sorted-desc", th.dataset.key === state.sort && state.desc);
    });
    const pager = document.getElementById("pager");
    pager.replaceChildren(
      el("button", { onclick: () => { state.page--; renderTable(); }, ...(state.page === 0 ? { disabled: "" } : {}) }, "\u2190 prev"),
      `${ids.length.toLocaleString("en")} latents \u00b7 page ${state.page + 1} of ${pages}`,
      el("button", { onclick: () => { state.page++; renderTable(); }, ...(state.page >= pages - 1 ? { disabled: "" } : {}) }, "next \u2192"));
  }

  // ---- search over the activating tokens of the top contexts ------------------------------
  let searchLoad = null;
  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const s = el("script", { src });
      s.onload = resolve;
      s.onerror = () => reject(new Error("could not load " + src));
      document.body.append(s);
    });
  }

  async function search(query) {
    state.query = query;
    const note = document.getElementById("list-note");
    if (!query) { state.subset = null; note.replaceChildren(); state.page = 0; renderTable(); return; }
    searchLoad = searchLoad || loadScript("data/search.js");
    await searchLoad;
    if (query !== state.query) return; // a newer query arrived while loading
    const q = query.toLowerCase();
    // Exact matches first, then the rest; within each, latents in the index's order.
    const hits = Object.keys(window.SAELAB_SEARCH).filter((t) => t.toLowerCase().includes(q));
    hits.sort((a, b) => (b.trim().toLowerCase() === q.trim()) - (a.trim().toLowerCase() === q.trim()) || a.length - b.length);
    const seen = new Set(), subset = [];
    for (const t of hits) for (const i of window.SAELAB_SEARCH[t]) if (!seen.has(i)) { seen.add(i); subset.push(i); }
    state.subset = subset;
    state.page = 0;
    const chips = el("span", { id: "search-tokens" });
    for (const t of hits.slice(0, 12)) chips.append(el("span", { class: "chip", text: visible(t) }));
    note.replaceChildren(`${subset.length} latents fire hardest on tokens containing \u201c${query}\u201d `, chips);
    renderTable();
  }

  // ---- latent panel -------------------------------------------------------------------
  const chunks = {};
  function loadChunk(c) {
    const have = window.SAELAB_CHUNKS && window.SAELAB_CHUNKS[c];
    if (have) return Promise.resolve(have);
    chunks[c] = chunks[c] || loadScript(`data/chunk_${String(c).padStart(4, "0")}.js`).then(() => window.SAELAB_CHUNKS[c]);
    return chunks[c];
  }

  function histogram(h) {
    // Pad narrow histograms (a latent whose activations fill one or two bins) with empty bins
    // on both sides, so a single bar reads as a bar and not as a filled box.
    let [start, counts] = h;
    const MIN_BINS = 16;
    if (counts.length < MIN_BINS) {
      const left = Math.min(start, Math.floor((MIN_BINS - counts.length) / 2));
      counts = Array(left).fill(0).concat(counts, Array(MIN_BINS - counts.length - left).fill(0));
      start -= left;
    }
    const W = 520, H = 110, pad = 18;
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "hist");
    svg.setAttribute("viewBox", `0 0 ${W} ${H + pad}`);
    svg.setAttribute("width", W);
    svg.setAttribute("height", H + pad);
    const mk = (tag, a) => { const e = document.createElementNS(svg.namespaceURI, tag); for (const k in a) e.setAttribute(k, a[k]); return e; };
    const peak = Math.max(...counts, 1), bw = W / Math.max(counts.length, 1);
    counts.forEach((c, j) => {
      const h = (H * c) / peak;
      const r = mk("rect", { x: j * bw + 0.5, y: H - h, width: Math.max(bw - 1, 1), height: h });
      const lo = Math.pow(10, META.hist.log10_min + (start + j) / META.hist.bins_per_decade);
      const hi = lo * Math.pow(10, 1 / META.hist.bins_per_decade);
      r.append(mk("title", {})); r.lastChild.textContent = `${fmt(lo)}\u2013${fmt(hi)}: ${c}`;
      svg.append(r);
    });
    const edge = (j) => fmt(Math.pow(10, META.hist.log10_min + (start + j) / META.hist.bins_per_decade));
    const t1 = mk("text", { x: 0, y: H + 13 }); t1.textContent = edge(0);
    const t2 = mk("text", { x: W, y: H + 13, "text-anchor": "end" }); t2.textContent = edge(counts.length) + "  (log scale)";
    const t3 = mk("text", { x: 2, y: 10 }); t3.textContent = `peak ${peak}`;
    svg.append(t1, t2, t3);
    return svg;
  }

  function contextLine(ctx, vocab, top) {
    const [value, center, toks, acts] = ctx;
    const line = el("div", { class: "ctx" }, el("span", { class: "v", text: fmt(value) }));
    toks.forEach((t, j) => {
      const a = acts[j];
      const s = vocab[t];
      const special = /^<(bos|eos|pad|unk)>$/.test(s);
      const span = el("span", { class: "tok" + (j === center ? " center" : "") + (special ? " special" : ""),
        title: `${JSON.stringify(s)}  act ${fmt(a)}`, text: inline(s) });
      if (a > 0) span.style.backgroundColor = `rgba(255, 140, 0, ${Math.min(1, 0.12 + 0.88 * a / top).toFixed(3)})`;
      line.append(span);
    });
    return line;
  }

  function tokenList(title, items, vocab) {
    const ol = el("ol");
    for (const [t, v] of items) ol.append(el("li", {}, el("span", { class: "chip", text: visible(vocab[t]) }), el("span", { class: "val", text: (v > 0 ? "+" : "") + fmt(v) })));
    return el("div", {}, el("h3", { text: title }), ol);
  }

  async function renderPanel(i) {
    const panel = document.getElementById("latent-panel");
    const head = el("h2", {}, `Latent ${i} `, flags(i));
    const fires = Math.round(LAT.density[i] * META.tokens);
    panel.replaceChildren(head, el("div", { class: "stats" },
      `density ${pct(LAT.density[i])} (${fires.toLocaleString("en")} of ${META.tokens.toLocaleString("en")} tokens) \u00b7 ` +
      `max act ${fmt(LAT.max[i])} \u00b7 mean act when firing ${fmt(LAT.mean[i])}`));
    let chunk;
    try { chunk = await loadChunk(Math.floor(i / META.chunk_size)); } catch (e) {
      panel.append(el("p", { class: "error", text: e.message })); return;
    }
    if (state.selected !== i) return;
    const rec = chunk.latents[i - chunk.start];
    if (rec.h[1].length) panel.append(el("h3", { text: "Activation histogram (nonzero activations)" }), histogram(rec.h));
    if (META.logits) {
      panel.append(el("div", { class: "logits" }, tokenList("Promoted output tokens", rec.p, chunk.vocab),
        tokenList("Suppressed output tokens", rec.s, chunk.vocab)),
      el("div", { class: "note", text: "Direct effect of the decoder direction on the logits (through the final norm's gain and the " +
        "unembedding), per unit of activation. Approximate: ignores later layers and the norm's rms rescaling; values before soft-capping." }));
    } else {
      panel.append(el("p", { class: "note", text: `Output tokens: ${META.logits_note}.` }));
    }
    panel.append(el("h3", { text: `Top activating contexts (${rec.c.length} shown, ${META.top_k} kept per latent)` }));
    if (!rec.c.length) panel.append(el("p", { class: "note", text: `Never fired on the ${META.tokens.toLocaleString("en")} scanned tokens.` }));
    const box = el("div", { class: "contexts" });
    const top = rec.c.length ? rec.c[0][0] : 1;
    for (const ctx of rec.c) box.append(contextLine(ctx, chunk.vocab, top));
    panel.append(box);
    panel.dataset.rendered = String(i);
  }

  function select(i) {
    const params = new URLSearchParams(location.hash.slice(1));
    params.set("latent", i);
    location.hash = params.toString();
  }

  // The URL fragment holds the view, so it can be bookmarked, shared and opened directly:
  // #latent=12, #search=def, #sort=density|max|mean|id, #order=asc|desc, #filter=live|dead|dense.
  function setParams(changes) {
    const params = new URLSearchParams(location.hash.slice(1));
    for (const [k, v] of Object.entries(changes)) { if (v === null || v === "") params.delete(k); else params.set(k, v); }
    history.replaceState(null, "", "#" + params.toString());
  }

  function route() {
    const params = new URLSearchParams(location.hash.slice(1));
    const sort = params.get("sort"), order = params.get("order"), filter = params.get("filter");
    let changed = false;
    if (["id", "density", "max", "mean"].includes(sort) && sort !== state.sort) { state.sort = sort; state.desc = sort !== "id"; changed = true; }
    if ((order === "asc" || order === "desc") && (order === "desc") !== state.desc) { state.desc = order === "desc"; changed = true; }
    if (["all", "live", "dead", "dense"].includes(filter) && filter !== state.filter) {
      state.filter = filter;
      document.getElementById("filter").value = filter;
      changed = true;
    }
    if (changed) { state.page = 0; renderTable(); }
    const q = params.get("search") || "";
    const box = document.getElementById("search");
    if (q !== state.query) { box.value = q; search(q); }
    const i = parseInt(params.get("latent"), 10);
    if (Number.isInteger(i) && i >= 0 && i < n && i !== state.selected) {
      state.selected = i;
      renderTable();
      renderPanel(i);
    }
  }

  // ---- wiring ---------------------------------------------------------------------------
  if (!META || !LAT) {
    document.body.prepend(el("p", { class: "error", text: "data/meta.js or data/latents.js did not load." }));
    return;
  }
  header();
  document.querySelectorAll("#latent-table th[data-key]").forEach((th) => th.addEventListener("click", () => {
    const key = th.dataset.key;
    state.desc = state.sort === key ? !state.desc : key !== "id";
    state.sort = key;
    state.page = 0;
    setParams({ sort: key, order: state.desc ? "desc" : "asc" });
    renderTable();
  }));
  document.getElementById("filter").addEventListener("change", (e) => {
    state.filter = e.target.value;
    state.page = 0;
    setParams({ filter: state.filter === "all" ? null : state.filter });
    renderTable();
  });
  let timer = null;
  document.getElementById("search").addEventListener("input", (e) => {
    clearTimeout(timer);
    timer = setTimeout(() => { setParams({ search: e.target.value }); search(e.target.value); }, 150);
  });
  window.addEventListener("hashchange", route);
  renderTable();
  route();
})();
