// refinersd's web page: plain JavaScript over the daemon's HTTP API
// (docs/api.md). No framework, no build step; everything it shows comes
// from the endpoints it calls.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "refinersd.token";

  // ---- API ----------------------------------------------------------

  let token = sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY) || "";

  class APIError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function headers(extra) {
    const h = Object.assign({}, extra);
    if (token) h.Authorization = "Bearer " + token;
    return h;
  }

  // api calls the daemon and returns its JSON answer; an error answer
  // becomes an APIError carrying the daemon's message. A 401 shows the
  // sign-in form.
  async function api(method, path, body, opts = {}) {
    const h = headers(opts.accept ? { Accept: opts.accept } : {});
    if (body !== undefined) h["Content-Type"] = "application/json";
    let res;
    try {
      res = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body), signal: opts.signal });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new APIError(0, `${method} ${path}: the daemon did not answer (${e.message})`);
    }
    if (!res.ok) {
      let msg = `${res.status} ${res.statusText}`;
      try {
        const j = await res.json();
        if (j && j.error && j.error.message) msg = j.error.message;
      } catch (_) { /* not JSON */ }
      if (res.status === 401 && !opts.noLogin) showLogin(token ? "The daemon refused the token." : "");
      throw new APIError(res.status, msg);
    }
    return opts.raw ? res : res.json();
  }

  // events reads a job's event stream (NDJSON) and calls onEvent for each
  // event until the stream ends. EventSource cannot send the token, so the
  // stream is read with fetch.
  async function events(id, onEvent, signal) {
    const res = await api("GET", `/v1/jobs/${id}/events`, undefined, { accept: "application/x-ndjson", raw: true, signal });
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (value) buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line) onEvent(JSON.parse(line));
      }
      if (done) break;
    }
  }

  // ---- status, sign-in, tabs ---------------------------------------

  function say(msg) { $("status").textContent = msg; }

  function showError(el, err) {
    el.textContent = err ? (err.message || String(err)) : "";
    el.hidden = !err;
  }

  function showLogin(msg) {
    $("main").hidden = true;
    $("tabs").hidden = true;
    $("login").hidden = false;
    $("logout").hidden = true;
    showError($("login-error"), msg ? new Error(msg) : null);
    $("token").focus();
  }

  async function start() {
    try {
      await loadLists();
    } catch (e) {
      if (e.status === 401) return; // the sign-in form is shown
      say(e.message);
    }
    $("login").hidden = true;
    $("tabs").hidden = false;
    $("main").hidden = false;
    $("logout").hidden = !token;
  }

  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    try {
      await api("GET", "/v1/adapters", undefined, { noLogin: true });
    } catch (e) {
      showError($("login-error"), e.status === 401 ? new Error("Wrong token: the daemon refused it.") : e);
      return;
    }
    sessionStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(TOKEN_KEY);
    ($("remember").checked ? localStorage : sessionStorage).setItem(TOKEN_KEY, token);
    $("token").value = "";
    start();
  });

  $("logout").addEventListener("click", () => {
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(TOKEN_KEY);
    showLogin("");
  });

  const tabs = ["generate", "gallery", "segment"];
  function selectTab(name, focus) {
    for (const t of tabs) {
      const on = t === name;
      const tab = $("tab-" + t);
      tab.setAttribute("aria-selected", String(on));
      tab.tabIndex = on ? 0 : -1;
      $("view-" + t).hidden = !on;
      if (on && focus) tab.focus();
    }
    if (name === "segment") drawSeg();
  }
  for (const t of tabs) $("tab-" + t).addEventListener("click", () => selectTab(t));
  $("tabs").addEventListener("keydown", (ev) => {
    const i = tabs.findIndex((t) => $("tab-" + t).getAttribute("aria-selected") === "true");
    const step = { ArrowRight: 1, ArrowLeft: -1 }[ev.key];
    if (step) selectTab(tabs[(i + step + tabs.length) % tabs.length], true);
  });

  // ---- lists: adapters and model names ------------------------------

  let adapters = [];

  async function loadLists() {
    const a = await api("GET", "/v1/adapters");
    adapters = a.adapters || [];
    renderAdapters();
    // Named pipelines and segmenters, when the daemon lists them; the
    // fields stay free text either way (empty: the daemon's default).
    for (const [path, key, list] of [["/v1/pipelines", "pipelines", "gen-models"], ["/v1/segmenters", "segmenters", "seg-models"]]) {
      try {
        const j = await api("GET", path);
        const items = (j[key] || []).map((p) => (typeof p === "string" ? { name: p } : p));
        if (key === "pipelines") for (const p of items) pipelines[p.name] = p;
        fillDatalist($(list), items.map((p) => p.name));
      } catch (e) {
        if (e.status === 401) throw e;
      }
    }
    pipelineDefaults();
  }

  // pipelineDefaults sets the size and steps fields to the chosen
  // pipeline's defaults and limits (GET /v1/pipelines), until the user
  // changes them.
  const pipelines = {};
  const touched = new Set();
  for (const id of ["width", "height", "steps"]) $(id).addEventListener("input", () => touched.add(id));
  function pipelineDefaults() {
    const p = pipelines[$("gen-model").value.trim()];
    if (!p) return;
    for (const [id, def, max] of [["width", p.width, p.max_width], ["height", p.height, p.max_height], ["steps", p.steps, p.max_steps]]) {
      if (max) $(id).max = String(max);
      if (def && !touched.has(id)) $(id).value = String(def);
    }
  }
  $("gen-model").addEventListener("change", pipelineDefaults);

  function fillDatalist(dl, names) {
    dl.replaceChildren(...names.map((n) => Object.assign(document.createElement("option"), { value: n })));
    const input = document.querySelector(`[list="${dl.id}"]`);
    if (input && !input.value && names.length === 1) input.value = names[0];
  }

  function renderAdapters() {
    const box = $("loras");
    const sel = $("cn-adapter");
    sel.replaceChildren(new Option("none", ""));
    if (!adapters.length) {
      box.replaceChildren(Object.assign(document.createElement("p"), { className: "hint", textContent: "No adapters in the store." }));
      return;
    }
    box.replaceChildren();
    adapters.forEach((a, i) => {
      const row = document.createElement("div");
      row.className = "lora";
      const label = document.createElement("label");
      label.className = "check";
      const cb = Object.assign(document.createElement("input"), { type: "checkbox", id: `lora-${i}`, value: a.name });
      cb.dataset.adapter = a.name;
      cb.addEventListener("change", countLoras);
      label.append(cb, a.name);
      const scale = Object.assign(document.createElement("input"), { type: "number", id: `lora-scale-${i}`, step: "0.05", value: "1", min: "-4", max: "4" });
      scale.setAttribute("aria-label", `Scale of ${a.name}`);
      row.append(label, scale);
      box.append(row);
      sel.append(new Option(a.name, a.name));
    });
  }

  function countLoras() {
    $("lora-count").textContent = String(document.querySelectorAll("#loras input[type=checkbox]:checked").length);
  }

  // ---- images --------------------------------------------------------

  function b64FromBuffer(buf) {
    const bytes = new Uint8Array(buf);
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(s);
  }

  // pngBase64 returns a file as base64 PNG: PNG files as they are (so the
  // digest the daemon computes is the file's), other images re-encoded.
  async function pngBase64(file) {
    const buf = await file.arrayBuffer();
    const sig = new Uint8Array(buf.slice(0, 8));
    if (sig.length === 8 && sig[0] === 0x89 && sig[1] === 0x50 && sig[2] === 0x4e && sig[3] === 0x47) return b64FromBuffer(buf);
    const bmp = await createImageBitmap(file);
    const c = document.createElement("canvas");
    c.width = bmp.width;
    c.height = bmp.height;
    c.getContext("2d").drawImage(bmp, 0, 0);
    const blob = await new Promise((ok) => c.toBlob(ok, "image/png"));
    return b64FromBuffer(await blob.arrayBuffer());
  }

  const pngURL = (b64) => "data:image/png;base64," + b64;

  function num(id) {
    const v = $(id).valueAsNumber;
    if (Number.isNaN(v)) throw new Error(`${$(id).labels[0] ? $(id).labels[0].textContent : id}: enter a number`);
    return v;
  }

  // ---- generate ---------------------------------------------------------

  let cnImage = null; // base64 PNG of the ControlNet condition
  $("cn-image").addEventListener("change", async () => {
    const f = $("cn-image").files[0];
    cnImage = f ? await pngBase64(f) : null;
    $("cn-preview").hidden = !cnImage;
    if (cnImage) $("cn-preview").src = pngURL(cnImage);
  });
  // Image to image: the initial image and the inpainting mask, as base64 PNG.
  const i2i = { init: null, mask: null };
  for (const [input, key, preview] of [["init-image", "init", "init-preview"], ["mask-image", "mask", "mask-preview"]]) {
    $(input).addEventListener("change", async () => {
      const f = $(input).files[0];
      i2i[key] = f ? await pngBase64(f) : null;
      $(preview).hidden = !i2i[key];
      if (i2i[key]) $(preview).src = pngURL(i2i[key]);
    });
  }
  $("i2i-clear").addEventListener("click", () => {
    i2i.init = i2i.mask = null;
    for (const id of ["init-image", "mask-image"]) $(id).value = "";
    $("init-preview").hidden = $("mask-preview").hidden = true;
  });

  $("cn-canny").addEventListener("change", () => {
    $("cn-low").disabled = $("cn-high").disabled = !$("cn-canny").checked;
  });

  $("seed-random").addEventListener("click", () => { $("seed").value = String(randomSeed()); });

  function randomSeed() {
    return crypto.getRandomValues(new Uint32Array(1))[0];
  }

  // buildRequest reads the form into a POST /v1/images request.
  function buildRequest() {
    const prompt = $("prompt").value.trim();
    if (!prompt) throw new Error("Prompt: write what to draw.");
    const req = {
      prompt,
      negative_prompt: $("negative").value.trim(),
      width: num("width"),
      height: num("height"),
      steps: num("steps"),
      guidance: num("guidance"),
      solver: $("solver").value,
      seed: $("seed").value === "" ? randomSeed() : num("seed"),
      preview: true,
    };
    if (req.width % 8 || req.height % 8) throw new Error("Width and height: use multiples of 8.");
    const model = $("gen-model").value.trim();
    if (model) req.model = model;
    const loras = [];
    document.querySelectorAll("#loras input[type=checkbox]:checked").forEach((cb) => {
      const scale = $(cb.id.replace("lora-", "lora-scale-")).valueAsNumber;
      loras.push({ plugin: "lora", file: cb.dataset.adapter, scale: Number.isNaN(scale) ? 1 : scale });
    });
    if (loras.length) req.adapters = loras;
    if (i2i.mask && !i2i.init) throw new Error("Image to image: a mask needs an initial image.");
    if (i2i.init) {
      req.init_image = i2i.init;
      req.strength = num("strength");
      if (i2i.mask) req.mask = i2i.mask;
    }
    const cn = $("cn-adapter").value;
    if (cn) {
      if (!cnImage) throw new Error("ControlNet: choose a condition image.");
      const c = { plugin: "controlnet", adapter: cn, image: cnImage, scale: num("cn-scale"), start: num("cn-start"), end: num("cn-end") };
      if ($("cn-canny").checked) Object.assign(c, { preprocess: "canny", low: num("cn-low"), high: num("cn-high") });
      req.controlnets = [c];
    }
    return req;
  }

  let running = null; // {id, abort}

  function setBusy(on) {
    running = on ? running || {} : null;
    document.body.dataset.busy = on ? "1" : "";
    $("generate").disabled = on;
    $("cancel").disabled = !on;
    document.querySelectorAll("#gallery button.again").forEach((b) => { b.disabled = on; });
  }

  // runJob submits an image job, follows its events (progress, previews)
  // and returns its result. onStep sees each step.
  async function runJob(req, onStep) {
    setBusy(true);
    const abort = new AbortController();
    running.abort = abort;
    const box = $("progress-box");
    const bar = $("progress");
    const label = $("progress-label");
    box.hidden = false;
    $("placeholder").hidden = true;
    $("result-caption").textContent = "";
    bar.removeAttribute("value"); // indeterminate until the first step
    // Counts of what arrived, for the browser tests and the curious.
    bar.dataset.steps = "0";
    bar.dataset.previews = "0";
    label.textContent = "Queued…";
    try {
      const job = await api("POST", "/v1/images/jobs", req);
      running.id = job.id;
      let end = null;
      await events(job.id, (e) => {
        switch (e.type) {
          case "queued": label.textContent = e.position ? `Queued (position ${e.position})…` : "Queued…"; break;
          case "started": label.textContent = "Starting…"; break;
          case "step":
          case "progress": {
            const step = e.step !== undefined ? e.step : e.done;
            const steps = e.steps !== undefined ? e.steps : e.total;
            bar.dataset.steps = String(+bar.dataset.steps + 1);
            if (steps) {
              bar.max = steps;
              bar.value = step;
              label.textContent = `Step ${step} of ${steps}`;
            }
            if (e.preview_png_base64) {
              bar.dataset.previews = String(+bar.dataset.previews + 1);
              $("preview").src = pngURL(e.preview_png_base64);
              $("preview").hidden = false;
              $("result").hidden = true;
            }
            if (onStep) onStep(step, steps);
            break;
          }
          case "done": case "failed": case "canceled": end = e; break;
        }
      }, abort.signal);
      if (!end) throw new Error("The event stream ended before the job did.");
      if (end.type === "canceled") throw Object.assign(new Error("Canceled."), { canceled: true });
      if (end.type === "failed") throw new Error(end.error || "The job failed.");
      const res = await api("GET", `/v1/jobs/${job.id}/result`);
      bar.max = 1;
      bar.value = 1;
      label.textContent = `Done in ${res.seconds != null ? res.seconds.toFixed(2) + " s" : "—"}`;
      return res;
    } catch (e) {
      label.textContent = e.canceled ? "Canceled" : "Failed";
      if (e.canceled && bar.max > 1) $("result-caption").textContent = `Canceled after step ${bar.value} of ${bar.max}.`;
      bar.max = 1;
      bar.value = 0;
      throw e;
    } finally {
      setBusy(false);
    }
  }

  function showResult(res, img) {
    $("preview").hidden = true;
    const r = $("result");
    r.src = pngURL(img.png_base64);
    r.dataset.seed = String(img.seed);
    r.dataset.job = res.id;
    r.hidden = false;
    const w = (res.warnings || []).length ? ` · warnings: ${res.warnings.join("; ")}` : "";
    $("result-caption").textContent = `seed ${img.seed}${res.seconds != null ? ` · ${res.seconds.toFixed(2)} s` : ""}${reports(res)}${w}`;
  }

  // reports says what each adapter did, so that a LoRA that matched
  // nothing does not go unnoticed.
  function reports(res) {
    const parts = [];
    for (const a of res.adapters || []) {
      const miss = (a.unmatched || []).length;
      parts.push(`${a.file}: ${a.layers_adapted} layers${miss ? `, ${miss} keys unmatched` : ""}`);
    }
    for (const c of res.controlnets || []) {
      parts.push(`${c.adapter || c.name}: steps ${c.active_steps} of ${c.steps}`);
    }
    return parts.length ? " · " + parts.join(" · ") : "";
  }

  $("gen-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError($("gen-error"), null);
    let req;
    try {
      req = buildRequest();
    } catch (e) {
      showError($("gen-error"), e);
      return;
    }
    say("Generating…");
    try {
      const res = await runJob(req);
      for (const img of res.images || []) {
        showResult(res, img);
        addToGallery(res, img, req);
      }
      say("");
    } catch (e) {
      say("");
      if (!e.canceled) showError($("gen-error"), e);
    }
  });

  $("cancel").addEventListener("click", async () => {
    if (!running || !running.id) return;
    $("cancel").disabled = true;
    try {
      await api("DELETE", `/v1/jobs/${running.id}`);
    } catch (e) {
      showError($("gen-error"), e);
    }
  });

  // ---- gallery ------------------------------------------------------------

  let galleryN = 0;

  function recipeOf(res, req) {
    let r = res.recipe;
    if (typeof r === "string") {
      try { r = JSON.parse(r); } catch (_) { r = { recipe: r }; }
    }
    return r && typeof r === "object" ? r : { prompt: req.prompt, seed: req.seed };
  }

  function addToGallery(res, img, req, againOf) {
    const li = $("gallery-item").content.firstElementChild.cloneNode(true);
    const n = ++galleryN;
    li.id = `item-${n}`;
    li.dataset.job = res.id;
    li.dataset.seed = String(img.seed);
    li.dataset.png = img.png_base64;
    const recipe = recipeOf(res, req);
    const im = li.querySelector("img");
    im.src = pngURL(img.png_base64);
    im.alt = `Generated: ${recipe.prompt || req.prompt || ""}`;
    li.querySelector(".prompt").textContent = recipe.prompt || req.prompt || "(recipe)";
    const size = recipe.width && recipe.height ? `${recipe.width}×${recipe.height}` : "";
    li.querySelector(".facts").textContent = [`#${n}`, `seed ${img.seed}`, size, res.seconds != null ? `${res.seconds.toFixed(2)} s` : ""].filter(Boolean).join(" · ");
    const dl = li.querySelector(".recipe");
    for (const k of Object.keys(recipe).sort()) {
      const v = recipe[k];
      dl.append(Object.assign(document.createElement("dt"), { textContent: k }),
        Object.assign(document.createElement("dd"), { textContent: typeof v === "object" ? JSON.stringify(v) : String(v) }));
    }
    const a = li.querySelector(".download");
    a.href = im.src;
    a.download = `refinersd-${res.id}-${img.seed}.png`;
    const note = li.querySelector(".note");
    if (againOf) {
      const same = againOf.dataset.png === img.png_base64;
      li.dataset.same = String(same);
      const of = `Run again of #${againOf.id.slice(5)}`;
      note.textContent = `${of}: ${same ? "identical PNG bytes" : "comparing pixels…"}`;
      if (!same) {
        samePixels(againOf.dataset.png, img.png_base64).then((px) => {
          li.dataset.samePixels = String(px);
          note.textContent = `${of}: ${px ? "identical pixels (the PNG's text differs)" : "other pixels"}`;
        });
      }
    }
    const again = li.querySelector(".again");
    again.disabled = !!running;
    li.request = req; // kept for the ControlNet condition images a re-run needs
    again.addEventListener("click", () => runAgain(li));
    li.querySelector(".edit").addEventListener("click", () => editFrom(recipe, req));
    $("gallery").prepend(li);
    $("gallery-empty").hidden = true;
    $("gallery-count").textContent = String(galleryN);
  }

  async function pixels(b64) {
    const img = new Image();
    img.src = pngURL(b64);
    await img.decode();
    const c = document.createElement("canvas");
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    const g = c.getContext("2d");
    g.drawImage(img, 0, 0);
    return g.getImageData(0, 0, c.width, c.height).data;
  }

  async function samePixels(a, b) {
    const [pa, pb] = await Promise.all([pixels(a), pixels(b)]);
    return pa.length === pb.length && pa.every((v, i) => v === pb[i]);
  }

  // runAgain re-runs an image from the recipe its PNG carries. The recipe
  // names its images (initial image, mask, ControlNet conditions) by digest
  // only, so they are sent again (the conditions in the recipe's order).
  async function runAgain(li) {
    const note = li.querySelector(".note");
    note.textContent = "Running again…";
    const body = { recipe: li.dataset.png, preview: true };
    const orig = li.request || {};
    const images = {};
    for (const k of ["init_image", "mask"]) if (orig[k]) images[k] = orig[k];
    const controls = orig.controlnets || [];
    if (controls.length) body.controlnets = controls.map((c) => ({ image: c.image }));
    Object.assign(body, images);
    try {
      const res = await runJob(body, (step, steps) => {
        note.textContent = `Running again: step ${step} of ${steps}`;
      });
      note.textContent = "";
      for (const img of res.images || []) {
        showResult(res, img);
        addToGallery(res, img, Object.assign(controls.length ? { controlnets: controls } : {}, images), li);
      }
    } catch (e) {
      note.textContent = e.canceled ? "Canceled." : `Failed: ${e.message}`;
    }
  }

  // editFrom fills the form from a recipe, to change it and generate.
  function editFrom(recipe, req) {
    const r = Object.assign({}, req, recipe);
    const set = (id, v) => { if (v !== undefined && v !== null) $(id).value = String(v); };
    set("prompt", r.prompt);
    set("negative", r.negative_prompt);
    set("width", r.width);
    set("height", r.height);
    set("steps", r.steps);
    set("guidance", r.guidance);
    set("seed", r.seed);
    if (r.solver) set("solver", r.solver);
    if (r.strength) set("strength", r.strength);
    if (req.init_image) {
      i2i.init = req.init_image;
      i2i.mask = req.mask || null;
      $("init-preview").src = pngURL(i2i.init);
      $("init-preview").hidden = false;
      $("mask-preview").hidden = !i2i.mask;
      if (i2i.mask) $("mask-preview").src = pngURL(i2i.mask);
      $("i2i-box").open = true;
    } else {
      $("i2i-clear").click(); // the recipe starts from noise
    }
    if (req.model) set("gen-model", req.model);
    selectTab("generate", true);
  }

  // ---- segment --------------------------------------------------------------

  const seg = {
    png: null, // base64 PNG
    digest: "", // from the daemon's first answer
    bmp: null,
    points: [],
    box: null,
    masks: [], // {score, overlay: canvas}
    selected: 0,
    seq: 0,
    drag: null,
    cursor: null, // keyboard cursor {x, y}
  };
  const canvas = $("seg-canvas");
  const ctx = canvas.getContext("2d");

  $("seg-image").addEventListener("change", async () => {
    const f = $("seg-image").files[0];
    if (!f) return;
    showError($("seg-error"), null);
    try {
      seg.png = await pngBase64(f);
      seg.bmp = await createImageBitmap(f);
    } catch (e) {
      showError($("seg-error"), new Error(`That file is not an image this browser can read (${e.message}).`));
      return;
    }
    Object.assign(seg, { digest: "", points: [], box: null, masks: [], selected: 0, cursor: null });
    seg.seq++; // an answer still on its way is for the old image
    canvas.width = seg.bmp.width;
    canvas.height = seg.bmp.height;
    $("seg-stage").hidden = false;
    $("seg-masks").replaceChildren();
    $("seg-info").textContent = `${seg.bmp.width}×${seg.bmp.height}: click a point on the object.`;
    delete $("seg-info").dataset.cached;
    updateSegButtons();
    drawSeg();
  });

  function updateSegButtons() {
    $("seg-undo").disabled = !seg.points.length && !seg.box;
    $("seg-clear").disabled = !seg.points.length && !seg.box;
  }

  function toImage(ev) {
    const r = canvas.getBoundingClientRect();
    return {
      x: Math.max(0, Math.min(canvas.width - 1, Math.round((ev.clientX - r.left) * canvas.width / r.width))),
      y: Math.max(0, Math.min(canvas.height - 1, Math.round((ev.clientY - r.top) * canvas.height / r.height))),
    };
  }

  function currentLabel(ev) {
    if (ev && ev.shiftKey) return "bg";
    return document.querySelector("input[name=seg-label]:checked").value;
  }

  canvas.addEventListener("pointerdown", (ev) => {
    if (!seg.bmp) return;
    canvas.setPointerCapture(ev.pointerId);
    seg.drag = { start: toImage(ev), now: toImage(ev) };
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (!seg.drag) return;
    seg.drag.now = toImage(ev);
    drawSeg();
  });
  canvas.addEventListener("pointerup", (ev) => {
    if (!seg.drag) return;
    const { start } = seg.drag;
    const end = toImage(ev);
    seg.drag = null;
    const far = Math.hypot(end.x - start.x, end.y - start.y) * canvas.getBoundingClientRect().width / canvas.width > 6;
    if (far) {
      seg.box = [Math.min(start.x, end.x), Math.min(start.y, end.y), Math.max(start.x, end.x), Math.max(start.y, end.y)];
    } else {
      seg.points.push({ x: end.x, y: end.y, label: currentLabel(ev) });
    }
    updateSegButtons();
    segment();
  });
  canvas.addEventListener("pointercancel", () => { seg.drag = null; drawSeg(); });

  // The keyboard can place points too: arrows move a cursor, Enter adds a
  // point there (with the label chosen above).
  canvas.addEventListener("keydown", (ev) => {
    if (!seg.bmp) return;
    const c = seg.cursor || (seg.cursor = { x: canvas.width >> 1, y: canvas.height >> 1 });
    const d = Math.max(1, Math.round(Math.min(canvas.width, canvas.height) / (ev.shiftKey ? 10 : 50)));
    const moves = { ArrowLeft: [-d, 0], ArrowRight: [d, 0], ArrowUp: [0, -d], ArrowDown: [0, d] };
    if (moves[ev.key]) {
      c.x = Math.max(0, Math.min(canvas.width - 1, c.x + moves[ev.key][0]));
      c.y = Math.max(0, Math.min(canvas.height - 1, c.y + moves[ev.key][1]));
      ev.preventDefault();
      drawSeg();
    } else if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      seg.points.push({ x: c.x, y: c.y, label: currentLabel() });
      updateSegButtons();
      segment();
    }
  });

  $("seg-undo").addEventListener("click", () => {
    if (seg.points.length) seg.points.pop();
    else seg.box = null;
    updateSegButtons();
    if (seg.points.length || seg.box) segment();
    else clearMasks();
  });
  $("seg-clear").addEventListener("click", () => {
    seg.points = [];
    seg.box = null;
    updateSegButtons();
    clearMasks();
  });
  $("seg-multi").addEventListener("change", () => { if (seg.points.length || seg.box) segment(); });

  function clearMasks() {
    seg.masks = [];
    seg.seq++;
    $("seg-masks").replaceChildren();
    drawSeg();
  }

  // segment asks for masks for the current points and box. The image is
  // sent once; later requests name it by digest so the daemon reuses its
  // embedding (and the image is sent again if the daemon forgot it).
  async function segment() {
    const seq = ++seg.seq;
    drawSeg();
    showError($("seg-error"), null);
    const req = { multimask: $("seg-multi").checked };
    const model = $("seg-model").value.trim();
    if (model) req.model = model;
    if (seg.points.length) req.points = seg.points.map((p) => ({ x: p.x, y: p.y, label: p.label }));
    if (seg.box) req.box = seg.box;
    $("seg-info").textContent = "Segmenting…";
    let res;
    try {
      if (seg.digest) {
        try {
          res = await api("POST", "/v1/segment", Object.assign({ image_digest: seg.digest }, req));
        } catch (e) {
          if (e.status !== 404) throw e;
          res = null; // the embedding left the cache: send the image again
        }
      }
      if (!res) res = await api("POST", "/v1/segment", Object.assign({ image: seg.png }, req));
    } catch (e) {
      if (seq === seg.seq) {
        $("seg-info").textContent = "";
        showError($("seg-error"), e);
      }
      return;
    }
    if (seq !== seg.seq) return; // a newer click answered first
    seg.digest = res.image_digest || seg.digest;
    const masks = await Promise.all((res.masks || []).map(async (m) => ({ score: m.score, pixels: m.pixels, overlay: await maskOverlay(m.png_base64) })));
    if (seq !== seg.seq) return;
    seg.masks = masks;
    seg.selected = masks.reduce((best, m, i) => (m.score > masks[best].score ? i : best), 0);
    const info = $("seg-info");
    info.dataset.cached = String(!!res.cached);
    info.textContent = `${masks.length} mask${masks.length === 1 ? "" : "s"} · embedding ${res.cached ? "from the cache" : "computed"}` +
      `${res.seconds != null ? ` · ${res.seconds.toFixed(2)} s` : ""}`;
    renderMaskList();
    drawSeg();
  }

  // maskOverlay turns a mask PNG (white = inside) into a tinted,
  // half-transparent layer the size of the image.
  async function maskOverlay(b64) {
    const img = new Image();
    img.src = pngURL(b64);
    await img.decode();
    const c = document.createElement("canvas");
    c.width = canvas.width;
    c.height = canvas.height;
    const g = c.getContext("2d");
    g.imageSmoothingEnabled = false;
    g.drawImage(img, 0, 0, c.width, c.height);
    const d = g.getImageData(0, 0, c.width, c.height);
    const p = d.data;
    for (let i = 0; i < p.length; i += 4) {
      const inside = p[i + 3] > 127 && p[i] > 127;
      p[i] = 47; p[i + 1] = 95; p[i + 2] = 208; p[i + 3] = inside ? 130 : 0;
    }
    g.putImageData(d, 0, 0);
    c.dataset.area = String(p.reduce((n, v, i) => (i % 4 === 3 && v ? n + 1 : n), 0));
    return c;
  }

  function renderMaskList() {
    const ol = $("seg-masks");
    ol.replaceChildren(...seg.masks.map((m, i) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "mask";
      b.dataset.score = String(m.score);
      b.dataset.area = m.overlay.dataset.area; // pixels tinted
      if (m.pixels !== undefined) b.dataset.pixels = String(m.pixels); // pixels inside, as the daemon counts them
      b.setAttribute("aria-pressed", String(i === seg.selected));
      b.append(Object.assign(document.createElement("span"), { textContent: `Mask ${i + 1}` }),
        Object.assign(document.createElement("span"), { textContent: `score ${Number(m.score).toFixed(3)}` }));
      b.addEventListener("click", () => {
        seg.selected = i;
        renderMaskList();
        drawSeg();
      });
      li.append(b);
      return li;
    }));
  }

  function drawSeg() {
    if (!seg.bmp) return;
    // What is being asked, for the curious and the browser tests.
    canvas.dataset.points = seg.points.map((p) => `${p.x},${p.y},${p.label}`).join(" ");
    canvas.dataset.box = seg.box ? seg.box.join(",") : "";
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(seg.bmp, 0, 0);
    const m = seg.masks[seg.selected];
    if (m) ctx.drawImage(m.overlay, 0, 0);
    const unit = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 100));
    const box = seg.drag ? [seg.drag.start.x, seg.drag.start.y, seg.drag.now.x, seg.drag.now.y] : seg.box;
    if (box) {
      ctx.lineWidth = unit / 2;
      ctx.strokeStyle = "#f5a524";
      ctx.setLineDash([unit, unit]);
      ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
      ctx.setLineDash([]);
    }
    for (const p of seg.points) {
      ctx.beginPath();
      ctx.arc(p.x, p.y, unit * 1.4, 0, 2 * Math.PI);
      ctx.fillStyle = p.label === "fg" ? "#2fbf71" : "#e5484d";
      ctx.fill();
      ctx.lineWidth = unit / 2;
      ctx.strokeStyle = "#ffffff";
      ctx.stroke();
    }
    if (seg.cursor && document.activeElement === canvas) {
      ctx.strokeStyle = "#f5a524";
      ctx.lineWidth = unit / 2;
      ctx.strokeRect(seg.cursor.x - unit * 2, seg.cursor.y - unit * 2, unit * 4, unit * 4);
    }
  }
  canvas.addEventListener("blur", drawSeg);

  start();
})();
