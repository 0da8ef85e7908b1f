// Kontext Studio: the browser side. Every change goes through the public /v1 API with the page's CSRF token.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const IMAGE_FIELDS = ["input_image", "input_image_2", "input_image_3", "input_image_4"];
const MAX_REFS = 4;

class ApiError extends Error {}

// One way to call the API; an error becomes a sentence for the page, never a JSON dump.
async function api(method, url, body, contentType) {
  const headers = {"X-CSRF-Token": csrf()};
  let payload = body;
  if (body !== undefined && !(body instanceof Blob)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  } else if (body instanceof Blob) {
    headers["Content-Type"] = contentType || body.type || "application/octet-stream";
  }
  let resp;
  try {
    resp = await fetch(url, {method, headers, body: payload, credentials: "same-origin"});
  } catch (err) {
    throw new ApiError("The server could not be reached. Check your connection and try again.");
  }
  if (resp.ok) return resp.status === 204 ? null : resp.json();
  let detail = `The server answered ${resp.status}.`;
  try {
    const problem = await resp.json();
    if (problem && (problem.detail || problem.title)) detail = problem.detail || problem.title;
  } catch (err) { /* not JSON: keep the status sentence */ }
  if (resp.status === 413) detail = `The file is too large: ${detail}`;
  throw new ApiError(sentence(detail));
}

function sentence(text) {
  const t = String(text).trim();
  return t ? t[0].toUpperCase() + t.slice(1) : t;
}

function showError(el, message) {
  if (!el) return;
  el.textContent = message || "";
  el.hidden = !message;
}

async function refreshCredits() {
  const el = $("#credits-available");
  if (!el) return;
  try {
    const acct = await api("GET", "/v1/account");
    el.textContent = acct.credits.available;
  } catch (err) { /* the header keeps the last figure */ }
}

// ---- references: drop, upload, check, role ----------------------------------------------------------
const refs = [];

function refsChanged() {
  renderRefs();
  const n = $("#coach-refs");
  if (n) {
    n.value = refs.length;
    $("#coach-roles").value = refs.map((r) => r.role || "").join(",");
    document.body.dispatchEvent(new Event("refs-changed"));
  }
}

function renderRefs() {
  maskSync();
  const list = $("#refs");
  if (!list) return;
  const roles = list.dataset.roles.split(",");
  list.replaceChildren();
  refs.forEach((ref, i) => {
    const li = document.createElement("li");
    li.className = "ref";
    li.dataset.testid = "ref";
    li.setAttribute("data-testid", "ref");
    const fig = document.createElement("div");
    fig.className = "ref-thumb";
    const img = document.createElement("img");
    img.src = ref.url;
    img.alt = `Reference ${i + 1}${ref.name ? ": " + ref.name : ""}`;
    img.width = 96;
    img.height = 96;
    fig.append(img);
    const body = document.createElement("div");
    body.className = "ref-body";
    const label = document.createElement("label");
    label.textContent = `Reference ${i + 1} role `;
    const select = document.createElement("select");
    select.setAttribute("data-testid", "role");
    for (const r of ["", ...roles]) {
      const o = document.createElement("option");
      o.value = r;
      o.textContent = r || "(none)";
      o.selected = (ref.role || "") === r;
      select.append(o);
    }
    select.addEventListener("change", () => { ref.role = select.value || null; refsChanged(); });
    label.append(select);
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "small";
    remove.textContent = "Remove";
    remove.setAttribute("aria-label", `Remove reference ${i + 1}`);
    remove.addEventListener("click", () => { refs.splice(i, 1); refsChanged(); });
    const findings = document.createElement("ul");
    findings.className = "findings";
    findings.setAttribute("data-testid", "findings");
    findings.setAttribute("aria-live", "polite");
    if (ref.checking) {
      findings.innerHTML = "<li class='muted'>Checking the photo…</li>";
    } else if (ref.checkError) {
      const li2 = document.createElement("li");
      li2.className = "muted";
      li2.textContent = ref.checkError;
      findings.append(li2);
    } else if (ref.report) {
      const shown = ref.report.findings.filter((f) => f.severity !== "info");
      if (!shown.length) {
        const ok = document.createElement("li");
        ok.className = "ok";
        ok.textContent = `Looks good (${ref.report.size.join("×")}).`;
        findings.append(ok);
      }
      for (const f of shown) {
        const item = document.createElement("li");
        item.className = f.severity;
        item.textContent = `${f.message} ${f.fix}`;
        findings.append(item);
      }
    }
    body.append(label, remove, findings);
    li.append(fig, body);
    list.append(li);
  });
  updatePrice();
}

async function checkRef(ref) {
  ref.checking = true;
  renderRefs();
  try {
    ref.report = await api("POST", "/v1/tools/check-reference",
                           {image: ref.file, expect_face: (ref.role || "subject") === "subject"});
    ref.checkError = null;
  } catch (err) {
    ref.checkError = `The reference checker could not run: ${err.message}`;
  }
  ref.checking = false;
  renderRefs();
}

async function addFiles(files) {
  const errorEl = $("#upload-error");
  const problems = [];
  for (const file of files) {
    if (refs.length >= MAX_REFS) {
      problems.push(`${file.name}: at most ${MAX_REFS} references; remove one first.`);
      continue;
    }
    try {
      const up = await api("POST", "/v1/files", file, file.type || "application/octet-stream");
      const ref = {file: up.id, url: up.urls.get, name: file.name, role: refs.length === 0 ? "subject" : null};
      refs.push(ref);
      refsChanged();
      checkRef(ref);
    } catch (err) {
      problems.push(`${file.name}: ${err.message}`);
    }
  }
  showError(errorEl, problems.join(" "));
}

function setupDropzone() {
  const zone = $("#dropzone");
  if (!zone) return;
  const input = $("#file-input");
  input.addEventListener("change", () => { addFiles(Array.from(input.files)); input.value = ""; });
  for (const ev of ["dragenter", "dragover"]) {
    zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    zone.addEventListener(ev, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    addFiles(Array.from(e.dataTransfer.files));
  });
}

function refsInput() {
  const input = {};
  refs.forEach((r, i) => { input[IMAGE_FIELDS[i]] = r.file; });
  if (refs.some((r) => r.role)) input.roles = refs.map((r) => r.role || null);
  return input;
}

// ---- pixel-lock mask: painted over the first reference ----------------------------------------------
// Strokes are kept in coordinates relative to the picture (0–1) so the same strokes draw the on-screen
// overlay at display size and the exported mask at the reference's natural size.
const mask = {strokes: [], refFile: null, natural: null, current: null};
const MASK_TINT = "#e0116f";

function maskActive() { return $("#pixel_lock") && $("#pixel_lock").value === "mask"; }

function maskPainted() { return mask.strokes.some((s) => !s.erase); }

function maskSync() {
  const editor = $("#mask-editor");
  if (!editor) return;
  editor.hidden = !maskActive();
  if (editor.hidden) return;
  const first = refs[0];
  if (!first) {
    mask.refFile = null;
    mask.natural = null;
    mask.strokes = [];
    $("#mask-image").removeAttribute("src");
    maskStatus("Add a reference photo first: the mask is painted on the first one.");
    maskRedraw();
    return;
  }
  if (first.file === mask.refFile) return;
  // Another first reference: the old strokes describe another picture.
  mask.refFile = first.file;
  mask.natural = null;
  mask.strokes = [];
  maskStatus("Loading the first reference…");
  const img = $("#mask-image");
  img.alt = "";
  img.onload = () => {
    if (mask.refFile !== first.file) return;
    mask.natural = [img.naturalWidth, img.naturalHeight];
    img.width = img.naturalWidth;
    img.height = img.naturalHeight;
    $("#mask-stage").style.aspectRatio = `${img.naturalWidth} / ${img.naturalHeight}`;
    maskResize();
    maskStatus("Nothing painted yet.");
  };
  img.onerror = () => { if (mask.refFile === first.file) maskStatus("The first reference could not be shown."); };
  img.src = first.url;
}

function maskStatus(text) { $("#mask-status").textContent = text; }

function maskDescribe() {
  if (!mask.natural) return;
  const n = mask.strokes.filter((s) => !s.erase).length;
  maskStatus(maskPainted()
    ? `${n} stroke${n === 1 ? "" : "s"} painted; the mask is sent at ${mask.natural[0]}×${mask.natural[1]}.`
    : "Nothing painted yet.");
}

function maskResize() {
  const canvas = $("#mask-canvas");
  if (!canvas) return;
  const rect = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.round(rect.width * dpr));
  canvas.height = Math.max(1, Math.round(rect.height * dpr));
  maskRedraw();
}

// Draw every stroke onto ctx (w×h): paint in `paint`, erase as `erase` (null: cut through to transparent).
function drawStrokes(ctx, w, h, paint, erase) {
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  for (const s of mask.strokes) {
    ctx.globalCompositeOperation = s.erase && erase === null ? "destination-out" : "source-over";
    const colour = s.erase ? (erase || "#000") : paint;
    ctx.strokeStyle = colour;
    ctx.fillStyle = colour;
    if (s.all) { ctx.fillRect(0, 0, w, h); continue; }
    ctx.lineWidth = s.size * w;
    ctx.beginPath();
    const [x0, y0] = s.points[0];
    ctx.moveTo(x0 * w, y0 * h);
    for (const [x, y] of s.points.slice(1)) ctx.lineTo(x * w, y * h);
    if (s.points.length === 1) ctx.lineTo(x0 * w + 0.01, y0 * h);  // a tap paints a dot
    ctx.stroke();
  }
  ctx.globalCompositeOperation = "source-over";
}

function maskRedraw() {
  const canvas = $("#mask-canvas");
  if (!canvas) return;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.globalAlpha = 1;
  drawStrokes(ctx, canvas.width, canvas.height, MASK_TINT, null);
}

// The mask the API takes: the first reference's natural size, white = the area to edit, black = keep.
function maskDataUrl() {
  if (!mask.natural || !maskPainted()) return null;
  const [w, h] = mask.natural;
  const out = document.createElement("canvas");
  out.width = w;
  out.height = h;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, w, h);
  drawStrokes(ctx, w, h, "#fff", "#000");
  return out.toDataURL("image/png");
}

function setupMask() {
  const canvas = $("#mask-canvas");
  if (!canvas) return;
  const brush = $("#mask-brush");
  const showBrush = () => { $("#mask-brush-value").textContent = `${brush.value} %`; };
  brush.addEventListener("input", showBrush);
  showBrush();
  const at = (e) => {
    const r = canvas.getBoundingClientRect();
    return [Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)),
            Math.min(1, Math.max(0, (e.clientY - r.top) / r.height))];
  };
  canvas.addEventListener("pointerdown", (e) => {
    if (!mask.natural || e.button > 0) return;
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    mask.current = {points: [at(e)], size: Number(brush.value) / 100, erase: $("#mask-erase").checked};
    mask.strokes.push(mask.current);
    maskRedraw();
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!mask.current) return;
    mask.current.points.push(at(e));
    maskRedraw();
  });
  const end = () => {
    if (!mask.current) return;
    mask.current = null;
    maskDescribe();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  $("#mask-clear").addEventListener("click", () => { mask.strokes = []; maskRedraw(); maskDescribe(); });
  // The keyboard way to a valid mask (and a start for erasing what should stay).
  $("#mask-all").addEventListener("click", () => {
    if (!mask.natural) return;
    mask.strokes = [{all: true}];
    maskRedraw();
    maskDescribe();
  });
  $("#pixel_lock").addEventListener("change", () => {
    maskSync();
    if (maskActive()) maskResize();
  });
  if (window.ResizeObserver) new ResizeObserver(() => maskResize()).observe($("#mask-stage"));
}

function lockText(result, recipe) {
  const mode = recipe.pixel_lock;
  if (mode === "off") return "Pixel lock: off.";
  const label = mode === "mask" ? "your painted mask" : "auto";
  const lock = result.pixel_lock;
  if (!lock) return `Pixel lock: ${label}.`;
  return lock.applied ? `Pixel lock: ${label}; original pixels kept outside the edited area.`
    : `Pixel lock: ${label}; not applied: ${lock.reason}.`;
}

// ---- the studio form --------------------------------------------------------------------------------
const studio = {current: null, stream: null, queueTimer: null, parent: null, session: null, turn: null,
                beforeUrl: null, lastInput: null};

function selectedTier() {
  const el = $('input[name="tier"]:checked');
  return el ? el.value : "dev";
}

function updatePrice() {
  const el = $('input[name="tier"]:checked');
  const price = $("#price");
  if (!el || !price) return;
  price.textContent = document.querySelector(".credits strong") ? `${el.dataset.price} credits` : "free";
}

function num(id) {
  const el = $(`#${id}`);
  if (!el || el.value.trim() === "") return undefined;
  return Number(el.value);
}

function collectInput() {
  const input = {prompt: $("#prompt").value.trim(), ...refsInput()};
  input.aspect_ratio = ($('input[name="aspect_ratio"]:checked') || {}).value || "match_input_image";
  if (($('input[name="seed_mode"]:checked') || {}).value === "fixed" && num("seed") !== undefined) {
    input.seed = num("seed");
  }
  const steps = num("steps");
  if (steps !== undefined) input.num_inference_steps = steps;
  const guidance = num("guidance");
  if (guidance !== undefined) input.guidance = guidance;
  if ($("#strategy").value !== "stitch") input.strategy = $("#strategy").value;
  if (maskActive()) {
    const painted = maskDataUrl();
    if (painted) input.lock_mask = painted;
  } else if ($("#pixel_lock").value !== "auto") {
    input.pixel_lock = $("#pixel_lock").value;
  }
  const guard = num("identity_guard");
  if (guard !== undefined) input.identity_guard = guard;
  const cands = num("candidates");
  if (cands !== undefined) input.candidates = cands;
  // "id" or "id:weight" per line, as the API takes them; the API names a bad entry and how to fix it.
  const loras = $("#loras").value.split("\n").map((l) => l.trim()).filter(Boolean);
  if (loras.length) input.loras = loras;
  return input;
}

function formProblem(input) {
  if (!refs.length) return "Add at least one reference photo first.";
  if (!input.prompt) return "Type what should change in the instruction box.";
  if (maskActive() && !input.lock_mask) {
    return "Paint the area to change on the first reference (Advanced → Pixel lock), or choose Auto.";
  }
  if (($('input[name="seed_mode"]:checked') || {}).value === "fixed" && input.seed === undefined) {
    return "Type a seed number, or choose Random.";
  }
  return null;
}

async function submitEdit(input, tier) {
  showError($("#form-error"), "");
  showError($("#result-error"), "");
  const problem = formProblem(input);
  if (problem) { showError($("#form-error"), problem); return; }
  let pred;
  try {
    pred = await api("POST", "/v1/predictions", {model: `flux-kontext-${tier}`, input});
  } catch (err) {
    showError($("#form-error"), err.message);
    return;
  }
  studio.lastInput = {input, tier};
  studio.beforeUrl = refs[0].url;
  if (studio.session && studio.parent) {
    try {
      await api("POST", `/v1/sessions/${studio.session}/turns`, {prediction: pred.id, parent: studio.parent});
    } catch (err) { showError($("#form-error"), `The edit runs, but the session could not record it: ${err.message}`); }
  }
  refreshCredits();
  track(pred);
}

function setStatus(text) { $("#job-status").textContent = text; }

function track(pred) {
  studio.current = pred;
  $("#placeholder").hidden = true;
  $("#job").hidden = false;
  $("#result").hidden = true;
  $("#cancel").disabled = false;
  $("#progress").value = 0;
  setStatus("Queued…");
  if (studio.stream) studio.stream.close();
  clearInterval(studio.queueTimer);
  const pollQueue = async () => {
    try {
      const q = await api("GET", `/v1/predictions/${pred.id}/queue`);
      if (q.status === "starting") {
        setStatus(q.ahead ? `Waiting: ${q.ahead} edit${q.ahead === 1 ? "" : "s"} ahead of yours.` : "Starting…");
      } else {
        clearInterval(studio.queueTimer);
      }
    } catch (err) { clearInterval(studio.queueTimer); }
  };
  pollQueue();
  studio.queueTimer = setInterval(pollQueue, 700);
  const es = new EventSource(`/v1/predictions/${pred.id}/stream`);
  studio.stream = es;
  es.addEventListener("progress", (e) => {
    const d = JSON.parse(e.data);
    if (d.status === "processing") {
      clearInterval(studio.queueTimer);
      $("#progress").value = Math.round(d.progress * 100);
      setStatus(`Rendering… ${Math.round(d.progress * 100)} %`);
    }
  });
  es.addEventListener("completed", (e) => {
    es.close();
    clearInterval(studio.queueTimer);
    finished(JSON.parse(e.data));
  });
  es.onerror = () => {
    // The stream closes after "completed"; if it broke earlier, ask once for the state.
    if (es.readyState === EventSource.CLOSED && studio.current && studio.current.id === pred.id) {
      api("GET", `/v1/predictions/${pred.id}`).then((p) => {
        if (["succeeded", "failed", "canceled", "aborted"].includes(p.status)) finished(p);
      }).catch(() => {});
    }
  };
}

function finished(pred) {
  if (!studio.current || studio.current.id !== pred.id || studio.current.done) return;
  studio.current = {...pred, done: true};
  $("#cancel").disabled = true;
  refreshCredits();
  if (pred.status !== "succeeded") {
    $("#progress").value = 0;
    const why = {canceled: "Canceled; the credits held for it were released.",
                 aborted: "The deadline passed before it started; nothing was charged.",
                 failed: `The edit failed: ${pred.error || "no reason given"}. The credits held for it were released.`};
    setStatus(why[pred.status] || pred.status);
    return;
  }
  $("#progress").value = 100;
  setStatus(`Done in ${(pred.metrics.predict_time || 0).toFixed(1)} s · ${pred.cost} credits.`);
  showResult(pred);
  if (studio.session) loadSession();
}

function showResult(pred) {
  const result = pred.result || {};
  const recipe = result.recipe || {};
  const size = recipe.output_size || [1, 1];
  const compare = $("#compare");
  compare.style.aspectRatio = `${size[0]} / ${size[1]}`;  // reserved before the pictures load: no layout shift
  for (const img of [$("#after"), $("#before")]) { img.width = size[0]; img.height = size[1]; }
  $("#after").src = pred.output;
  $("#before").src = studio.beforeUrl || pred.output;
  setCompare(50);
  const badge = $("#identity");
  const sim = result.identity && result.identity.similarity;
  if (sim === null || sim === undefined) {
    badge.textContent = "identity not measured";
    badge.className = "badge muted";
  } else {
    badge.textContent = `identity ${sim.toFixed(2)}`;
    badge.className = `badge ${result.identity.passed === false ? "warn" : "good"}`;
  }
  $("#lock-info").textContent = lockText(result, recipe);
  $("#result-meta").textContent = `seed ${result.seed} · ${size[0]}×${size[1]} · ${pred.model}`;
  const warnings = $("#warnings");
  warnings.replaceChildren();
  for (const w of result.warnings || []) {
    const li = document.createElement("li");
    li.textContent = w;
    warnings.append(li);
  }
  const dl = $("#download");
  dl.href = pred.output;
  dl.download = `kontext-${pred.id}.${(recipe.output_format || "png").replace("jpeg", "jpg")}`;
  $("#result").hidden = false;
}

function setCompare(v) {
  $("#compare-range").value = v;
  $("#before").style.clipPath = `inset(0 ${100 - v}% 0 0)`;
  $(".divider").style.left = `${v}%`;
}

async function useAsInput(pred) {
  showError($("#result-error"), "");
  try {
    const blob = await (await fetch(pred.output, {credentials: "same-origin"})).blob();
    const up = await api("POST", "/v1/files", blob, blob.type || "image/png");
    if (!studio.session) {
      const s = await api("POST", "/v1/sessions", {prediction: pred.id});
      studio.session = s.id;
    }
    continueFrom(pred.id, up);
    loadSession();
  } catch (err) {
    showError($("#result-error"), `Could not use it as input: ${err.message}`);
  }
}

function continueFrom(predictionId, upload) {
  studio.parent = predictionId;
  refs.splice(0, refs.length, {file: upload.id, url: upload.urls.get, name: "previous result", role: "subject"});
  refsChanged();
  checkRef(refs[0]);
  $("#prompt").value = "";
  $("#prompt").focus();
}

async function loadSession() {
  if (!studio.session) return;
  const box = $("#session");
  const s = await api("GET", `/v1/sessions/${studio.session}`);
  const strip = $("#strip");
  strip.replaceChildren();
  for (const t of s.turns) {
    const li = document.createElement("li");
    li.className = "turn" + (t.prediction === studio.parent ? " current" : "") + (t.branch ? " branch" : "");
    li.setAttribute("data-testid", "turn");
    const btn = document.createElement("button");
    btn.type = "button";
    btn.setAttribute("aria-label", `Continue from turn ${t.turn}: ${t.prompt}`);
    if (t.output) {
      const img = document.createElement("img");
      img.src = t.output;
      img.alt = "";
      img.width = 72;
      img.height = 72;
      btn.append(img);
    }
    const cap = document.createElement("span");
    const drift = t.drift && t.drift.similarity !== null ? ` · drift ${t.drift.similarity.toFixed(2)}` : "";
    cap.textContent = `Turn ${t.turn}${t.branch ? " (branch)" : ""}${drift}`;
    btn.append(cap);
    btn.disabled = !t.output;
    btn.addEventListener("click", () => selectTurn(t));
    li.append(btn);
    strip.append(li);
  }
  studio.turns = s.turns;
  box.hidden = false;
}

async function selectTurn(t) {
  try {
    const blob = await (await fetch(t.output, {credentials: "same-origin"})).blob();
    const up = await api("POST", "/v1/files", blob, blob.type || "image/png");
    continueFrom(t.prediction, up);
    loadSession();
  } catch (err) {
    showError($("#result-error"), `Could not continue from that turn: ${err.message}`);
  }
}

function undo() {
  const turns = studio.turns || [];
  const cur = turns.find((t) => t.prediction === studio.parent);
  const prev = cur && turns.find((t) => t.prediction === cur.parent);
  if (prev) selectTurn(prev);
  else showError($("#result-error"), "Nothing to undo: this is the first turn of the session.");
}

async function reuseSettings(predictionId) {
  try {
    const r = await api("GET", `/v1/predictions/${predictionId}/recipe`);
    const input = r.input;
    refs.splice(0, refs.length);
    IMAGE_FIELDS.forEach((f, i) => {
      if (input[f]) refs.push({file: input[f], url: r.image_urls[i], name: `reference ${i + 1}`,
                               role: (input.roles || [])[i] || null});
    });
    refsChanged();
    refs.forEach((ref) => checkRef(ref));
    $("#prompt").value = input.prompt || "";
    $("#prompt").dispatchEvent(new Event("input", {bubbles: true}));
    const tier = $(`input[name="tier"][value="${r.tier}"]`);
    if (tier) tier.checked = true;
    const aspect = $(`input[name="aspect_ratio"][value="${input.aspect_ratio || "match_input_image"}"]`);
    if (aspect) aspect.checked = true;
    if (input.seed !== undefined && input.seed !== null) {
      $('input[name="seed_mode"][value="fixed"]').checked = true;
      $("#seed").value = input.seed;
    }
    $("#steps").value = input.num_inference_steps ?? "";
    $("#guidance").value = input.guidance ?? "";
    $("#strategy").value = input.strategy || "stitch";
    // A painted mask is not carried over (the picture may differ): its edit re-runs with the auto lock.
    $("#pixel_lock").value = input.pixel_lock || "auto";
    maskSync();
    $("#identity_guard").value = input.identity_guard ?? "";
    $("#candidates").value = input.candidates ?? "";
    $("#loras").value = (input.loras || []).map((l) => (typeof l === "string" ? l : `${l.id}:${l.weight ?? 1}`))
      .join("\n");
    updatePrice();
  } catch (err) {
    showError($("#form-error"), `Could not load those settings: ${err.message}`);
  }
}

async function listLoras() {
  const box = $("#lora-list");
  if (!box) return;
  let found;
  try { found = (await api("GET", "/v1/loras")).results; } catch (err) { return; }
  box.replaceChildren();
  if (!found.length) { box.textContent = "You have no trained LoRAs yet."; return; }
  for (const lora of found) {
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "small";
    btn.textContent = `Add ${lora.name || lora.id}`;
    btn.addEventListener("click", () => {
      const area = $("#loras");
      area.value = (area.value.trim() ? area.value.trim() + "\n" : "") + `${lora.id}:1.0`;
    });
    box.append(btn);
  }
}

function setupStudio() {
  const form = $("#edit-form");
  if (!form) return;
  form.addEventListener("submit", (e) => { e.preventDefault(); submitEdit(collectInput(), selectedTier()); });
  $$('input[name="tier"]').forEach((el) => el.addEventListener("change", updatePrice));
  $("#seed").addEventListener("input", () => { $('input[name="seed_mode"][value="fixed"]').checked = true; });
  $("#cancel").addEventListener("click", async () => {
    if (!studio.current) return;
    try {
      setStatus("Canceling…");
      const pred = await api("POST", `/v1/predictions/${studio.current.id}/cancel`);
      if (studio.stream) studio.stream.close();
      clearInterval(studio.queueTimer);
      finished(pred);  // the answer already says canceled (or finished, if it ended first)
    } catch (err) { setStatus(err.message); }
  });
  $("#compare-range").addEventListener("input", (e) => setCompare(Number(e.target.value)));
  $("#use-input").addEventListener("click", () => useAsInput(studio.current));
  $("#reuse").addEventListener("click", () => reuseSettings(studio.current.id));
  $("#new-seed").addEventListener("click", () => {
    if (!studio.lastInput) return;
    const {input, tier} = studio.lastInput;
    const again = {...input};
    delete again.seed;
    $('input[name="seed_mode"][value="random"]').checked = true;  // the form says what was sent
    submitEdit(again, tier);
  });
  $("#promote").addEventListener("click", async () => {
    showError($("#result-error"), "");
    try {
      const pred = await api("POST", `/v1/predictions/${studio.current.id}/promote`, {tier: "pro"});
      refreshCredits();
      track(pred);
    } catch (err) { showError($("#result-error"), `Render with Pro: ${err.message}`); }
  });
  $("#undo").addEventListener("click", undo);
  document.addEventListener("click", (e) => {
    const btn = e.target.closest("[data-rewrite]");
    if (!btn) return;
    $("#prompt").value = btn.dataset.rewrite;
    $("#prompt").dispatchEvent(new Event("input", {bubbles: true}));
    $("#prompt").focus();
  });
  updatePrice();
  listLoras();
  const reuse = new URLSearchParams(location.search).get("reuse");
  if (reuse) reuseSettings(reuse);
}

// ---- series -----------------------------------------------------------------------------------------
function setupSeries() {
  const form = $("#series-form");
  if (!form) return;
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    showError($("#form-error"), "");
    const scenes = $("#scenes").value.split("\n").map((s) => s.trim()).filter(Boolean);
    if (!refs.length) { showError($("#form-error"), "Add at least one reference photo first."); return; }
    if (!scenes.length) { showError($("#form-error"), "Type at least one scene, one per line."); return; }
    const input = refsInput();
    const seed = $("#series-seed").value.trim();
    if (seed) input.seed = Number(seed);
    let series;
    try {
      series = await api("POST", "/v1/series", {model: `flux-kontext-${$("#series-tier").value}`, input, scenes});
    } catch (err) { showError($("#form-error"), err.message); return; }
    refreshCredits();
    pollSeries(series);
  });
}

async function pollSeries(series) {
  renderSeries(series);
  if (series.done) { refreshCredits(); return; }
  setTimeout(async () => {
    try { pollSeries(await api("GET", `/v1/series/${series.id}`)); } catch (err) {
      showError($("#form-error"), err.message);
    }
  }, 500);
}

function renderSeries(series) {
  const grid = $("#series-grid");
  grid.replaceChildren();
  series.items.forEach((it, i) => {
    const li = document.createElement("li");
    li.className = "tile";
    li.setAttribute("data-testid", "scene");
    li.dataset.status = it.status;
    const thumb = document.createElement("span");
    thumb.className = "thumb";
    if (it.output) {
      const img = document.createElement("img");
      img.src = it.output;
      img.alt = `Scene ${i + 1}: ${it.prompt}`;
      img.width = 160;
      img.height = 160;
      thumb.append(img);
    } else {
      const box = document.createElement("span");
      box.className = `status-box ${it.status}`;
      box.textContent = it.status === "processing" ? `${Math.round(it.progress * 100)} %` : it.status;
      thumb.append(box);
    }
    const cap = document.createElement("span");
    cap.className = "caption";
    cap.textContent = `${i + 1}. ${it.prompt}`;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = it.similarity === null || it.similarity === undefined ? `seed ${it.seed ?? "…"}`
      : `seed ${it.seed} · identity ${it.similarity.toFixed(2)}`;
    li.append(thumb, cap, meta);
    grid.append(li);
  });
  const sheet = $("#contact-sheet");
  const anyDone = series.items.some((it) => it.status === "succeeded");
  sheet.hidden = !(series.done && anyDone);
  sheet.href = series.urls.contact_sheet;
}

// ---- account ----------------------------------------------------------------------------------------
function setupAccount() {
  const form = $("#key-form");
  if (!form) return;
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    showError($("#key-error"), "");
    try {
      const k = await api("POST", "/v1/account/keys", {name: $("#key-name").value});
      $("#new-key-value").textContent = k.key;
      $("#new-key").hidden = false;
      const tr = document.createElement("tr");
      tr.dataset.keyId = k.id;
      tr.innerHTML = "<td></td><td><code></code></td><td>just now</td><td>never</td><td class='state'>active</td>"
        + "<td><button type='button' class='small'>Revoke</button></td>";
      tr.children[0].textContent = k.name || "—";
      tr.querySelector("code").textContent = k.prefix;
      tr.querySelector("button").dataset.revoke = k.id;
      const empty = $("#keys-body tr.empty");
      if (empty) empty.remove();
      $("#keys-body").append(tr);
    } catch (err) { showError($("#key-error"), err.message); }
  });
  document.addEventListener("click", async (e) => {
    const btn = e.target.closest("[data-revoke]");
    if (!btn) return;
    try {
      await api("DELETE", `/v1/account/keys/${btn.dataset.revoke}`);
      const row = btn.closest("tr");
      row.querySelector(".state").textContent = "revoked";
      btn.remove();
    } catch (err) { showError($("#key-error"), err.message); }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupDropzone();
  setupStudio();
  setupMask();
  setupSeries();
  setupAccount();
});
