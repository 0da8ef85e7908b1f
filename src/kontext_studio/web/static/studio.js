// Kontext Studio: the browser side. Every change goes through the public /v1 API with the page's CSRF token.
"use strict";

const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const IMAGE_FIELDS = ["input_image", "input_image_2", "input_image_3", "input_image_4"];
const MAX_REFS = 4;
const TERMINAL = ["succeeded", "failed", "canceled", "aborted"];

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

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children);
  return node;
}

async function refreshCredits() {
  const box = $("#credits-available");
  if (!box) return;
  try {
    const acct = await api("GET", "/v1/account");
    box.textContent = acct.credits.available;
  } catch (err) { /* the header keeps the last figure */ }
}

// ---- references: choose, drop anywhere, paste, samples; the checker's notes under each ------------------
const refs = [];

function refsChanged() {
  renderRefs();
  const n = $("#coach-refs");
  if (n) {
    n.value = refs.length;
    $("#coach-roles").value = refs.map((r) => r.role || "").join(",");
    document.body.dispatchEvent(new Event("refs-changed"));
  }
  if (studio.view !== "result" && studio.view !== "grid") showCanvas(refs.length ? "image" : "empty");
}

function renderRefs() {
  maskSync();
  const list = $("#refs");
  if (!list) return;
  const roles = list.dataset.roles.split(",");
  list.replaceChildren();
  refs.forEach((ref, i) => {
    const img = el("img", {src: ref.url, alt: `Reference ${i + 1}${ref.name ? ": " + ref.name : ""}`, width: 64, height: 64});
    const select = el("select", {"data-testid": "role", "aria-label": `Role of reference ${i + 1}`});
    for (const r of ["", ...roles]) {
      const o = el("option", {value: r, text: r || "(no role)"});
      o.selected = (ref.role || "") === r;
      select.append(o);
    }
    select.addEventListener("change", () => { ref.role = select.value || null; refsChanged(); });
    const remove = el("button", {type: "button", class: "small", text: "Remove", "aria-label": `Remove reference ${i + 1}`});
    remove.addEventListener("click", () => { refs.splice(i, 1); refsChanged(); });
    const findings = el("ul", {class: "findings", "data-testid": "findings", "aria-live": "polite"});
    if (ref.checking) {
      findings.append(el("li", {class: "muted", text: "Checking the photo…"}));
    } else if (ref.checkError) {
      findings.append(el("li", {class: "muted", text: ref.checkError}));
    } else if (ref.report) {
      const shown = ref.report.findings.filter((f) => f.severity !== "info");
      if (!shown.length) findings.append(el("li", {class: "ok", text: `Looks good (${ref.report.size.join("×")}).`}));
      for (const f of shown) findings.append(el("li", {class: f.severity, text: `${f.message} ${f.fix}`}));
    }
    const top = el("div", {class: "ref-top"}, el("strong", {text: `Reference ${i + 1}`}), select, remove);
    list.append(el("li", {class: "ref", "data-testid": "ref"}, el("div", {class: "ref-thumb"}, img),
                   el("div", {class: "ref-body"}, top, findings)));
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
  if (problems.length && errorEl) errorEl.scrollIntoView({block: "nearest"});
}

async function addSample(url, name) {
  try {
    const blob = await (await fetch(url)).blob();
    await addFiles([new File([blob], `${name}.jpg`, {type: blob.type || "image/jpeg"})]);
  } catch (err) {
    showError($("#upload-error"), `The sample photo could not be loaded: ${err.message}`);
  }
}

function hasFiles(e) {
  return e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
}

// Drop anywhere on the page, paste from the clipboard, or choose files.
function setupPicking() {
  const input = $("#file-input");
  if (!input) return;
  input.addEventListener("change", () => { addFiles(Array.from(input.files)); input.value = ""; });
  for (const btn of $$("[data-choose-files]")) btn.addEventListener("click", () => input.click());
  for (const btn of $$("[data-sample]")) btn.addEventListener("click", () => addSample(btn.dataset.sample, btn.dataset.name));
  const prompt = $("#prompt");
  const examples = $("#examples");
  if (prompt && examples) {
    const sync = () => { examples.hidden = prompt.value.trim() !== ""; };
    prompt.addEventListener("input", sync);
    sync();
  }
  for (const btn of $$("[data-example]")) {
    btn.addEventListener("click", () => {
      const box = $("#prompt");
      box.value = btn.dataset.example;
      box.focus();
      box.dispatchEvent(new Event("input", {bubbles: true}));
    });
  }
  const overlay = $("#drop-overlay");
  let depth = 0;
  document.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth += 1;
    if (overlay) overlay.hidden = false;
  });
  document.addEventListener("dragover", (e) => { if (hasFiles(e)) e.preventDefault(); });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth && overlay) overlay.hidden = true;
  });
  document.addEventListener("drop", (e) => {
    depth = 0;
    if (overlay) overlay.hidden = true;
    if (!e.dataTransfer || !e.dataTransfer.files.length) return;
    e.preventDefault();
    addFiles(Array.from(e.dataTransfer.files));
  });
  document.addEventListener("paste", (e) => {
    const files = Array.from((e.clipboardData && e.clipboardData.files) || []).filter((f) => f.type.startsWith("image/"));
    if (!files.length) return;  // text pastes into the instruction as usual
    e.preventDefault();
    addFiles(files.map((f, i) => (f.name && f.name !== "image.png" ? f
      : new File([f], `pasted-${Date.now()}-${i}.${(f.type.split("/")[1] || "png")}`, {type: f.type}))));
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

// ---- the canvas: the picture is the page ----------------------------------------------------------
const studio = {current: null, batch: [], stream: null, timers: [], parent: null, session: null, turns: [],
                beforeUrl: null, lastInput: null, view: "empty", shown: null, aiTools: new Map()};

// What the canvas shows: "empty" (first steps), "image" (the first reference), "result" (compare), "grid".
function showCanvas(view) {
  if (!$("#canvas")) return;
  studio.view = view;
  $("#canvas").classList.toggle("is-empty", view === "empty");
  $("#empty").hidden = view !== "empty";
  $("#canvas-image").hidden = view !== "image";
  $("#compare").hidden = view !== "result";
  $("#variations").hidden = view !== "grid";
  if (view === "image" && refs[0]) {
    const img = $("#canvas-image");
    if (img.dataset.src !== refs[0].url) {
      img.dataset.src = refs[0].url;
      img.onload = () => { img.width = img.naturalWidth; img.height = img.naturalHeight; fitCanvas(); };
      img.src = refs[0].url;
      img.alt = `Reference 1${refs[0].name ? ": " + refs[0].name : ""}, shown large`;
    }
  }
  if (view !== "result" && view !== "grid") $("#result").hidden = true;
  updateEmpty();
  fitCanvas();
}

// Size the shown picture to the largest box of its shape that fits the canvas (no scrolling, no stretching).
function fitCanvas() {
  const inner = $(".canvas-inner");
  if (!inner) return;
  const box = inner.getBoundingClientRect();
  if (!box.width || !box.height) return;
  const fit = (target, w, h) => {
    const scale = Math.min(box.width / w, box.height / h);
    target.style.width = `${Math.floor(w * scale)}px`;
    target.style.height = `${Math.floor(h * scale)}px`;
  };
  if (studio.view === "empty" && !$("#frame").hidden) {
    const [w, h] = frameAspect().split(":").map(Number);
    fit($("#frame"), w, h);
  } else if (studio.view === "image") {
    const img = $("#canvas-image");
    if (img.naturalWidth) fit(img, img.naturalWidth, img.naturalHeight);
  } else if (studio.view === "result" && studio.shown) {
    fit($("#compare"), studio.shown[0], studio.shown[1]);
  } else if (studio.view === "grid") {
    const n = $$("#variations > li").length;
    const side = n > 2 ? Math.min(box.width, box.height) : Math.min(box.width, box.height * 2);
    $("#variations").style.width = `${Math.floor(side)}px`;
  }
}

function selectedTier() {
  const chosen = $('input[name="tier"]:checked');
  return chosen ? chosen.value : "dev";
}

// The catalogue name the API is given for a card's short key (the cards carry both).
function modelOf(tier) {
  const card = $(`input[name="tier"][value="${tier}"]`);
  return card && card.dataset.model ? card.dataset.model : tier;
}

function generates(card) { return !!card && card.dataset.generates === "yes"; }

function hosted(card) { return !!card && card.dataset.hosted === "yes"; }

const SPEED_WORDS = {
  "": "Model default: each model runs at its own speed setting.",
  stock: "Stock: the model exactly as published.",
  lossless: "Lossless: the same picture, faster on a GPU.",
  fast: "Fast: a small, bounded loss of fine detail for more speed.",
};

// Speed and Draft are for the models this server runs; a hosted model runs at BFL's own speed, so both are
// switched off there and the note says why (the API would refuse them).
function updateSpeed() {
  const speed = $("#acceleration");
  if (!speed) return;
  const card = $('input[name="tier"]:checked');
  const off = hosted(card);
  speed.disabled = off;
  $("#draft").disabled = off;
  // The chosen speed in full (the closed list is narrower than its longest choice).
  $("#speed-note").textContent = off
    ? `${card.dataset.title} runs on Black Forest Labs' servers, which choose their own speed: Speed and Draft `
      + "apply to the models that run on this server."
    : `${SPEED_WORDS[speed.value] || SPEED_WORDS[""]} A draft is a quick look at half the steps: keep the seed `
      + "and turn Draft off for the full picture.";
}

// The shape the frame and a text-to-image run take: "Match" has no photo to match, so it means square.
function frameAspect() {
  const value = ($('input[name="aspect_ratio"]:checked') || {}).value || "match_input_image";
  return value === "match_input_image" ? "1:1" : value;
}

// With no photo, a model that generates turns the empty canvas into an aspect frame for text-to-image; an
// edit-only model says it needs a photo.
function updateEmpty() {
  if (!$("#empty")) return;
  const card = $('input[name="tier"]:checked');
  const t2i = !refs.length && generates(card);
  const framed = t2i && studio.view === "empty";
  $("#canvas").classList.toggle("t2i", framed);
  $("#frame").hidden = !framed;
  $("#t2i-lead").hidden = !t2i;
  $("#empty-title").textContent = t2i ? "Describe a picture, or start from a photo" : "Start with a photo";
  $("#frame-label").textContent = `${frameAspect()} · text to image`;
  const prompt = $("#prompt");
  if (!prompt.dataset.editHint) prompt.dataset.editHint = prompt.placeholder;
  prompt.placeholder = t2i ? "Describe the picture to make: a red lighthouse on a cliff at dusk, soft film light"
    : prompt.dataset.editHint;
  const note = $("#t2i-note");
  if (t2i) note.textContent = "";
  else if (card && !generates(card) && note.dataset.none === "") {
    note.textContent = `${card.dataset.title} edits a photo: add one to start, or pick a model that makes pictures from words.`;
  } else note.textContent = note.dataset.none;
  note.hidden = !note.textContent;
}

function outputs() {
  const n = $("#num-outputs");
  return n ? Math.max(1, Math.min(4, Number(n.value) || 1)) : 1;
}

function updatePrice() {
  const chosen = $('input[name="tier"]:checked');
  const price = $("#price");
  if (!price) return;
  if (!chosen) { price.textContent = "no model"; return; }
  const n = outputs();
  const each = Number(chosen.dataset.price);
  price.textContent = document.querySelector(".credits strong") ? `${each * n} credits` : "free";
  const name = $("#model-chosen");
  if (name) name.textContent = `${chosen.dataset.title}${n > 1 ? ` × ${n}` : ""}`;
  const submit = $("#submit");
  if (submit) submit.setAttribute("aria-disabled", refs.length || generates(chosen) ? "false" : "true");
  updateEmpty();
  updateSpeed();
  updateToolPrices();
}

function num(id) {
  const box = $(`#${id}`);
  if (!box || box.value.trim() === "") return undefined;
  return Number(box.value);
}

function collectInput() {
  const input = {prompt: $("#prompt").value.trim(), ...refsInput()};
  input.aspect_ratio = ($('input[name="aspect_ratio"]:checked') || {}).value || "match_input_image";
  if (!refs.length && input.aspect_ratio === "match_input_image") input.aspect_ratio = frameAspect();
  if (($('input[name="seed_mode"]:checked') || {}).value === "fixed" && num("seed") !== undefined) {
    input.seed = num("seed");
  }
  const steps = num("steps");
  if (steps !== undefined) input.num_inference_steps = steps;
  const guidance = num("guidance");
  if (guidance !== undefined) input.guidance = guidance;
  // Only sent when set, and never to a hosted model (its speed is BFL's).
  const speed = $("#acceleration");
  if (speed && !speed.disabled && speed.value) input.acceleration = speed.value;
  const draft = $("#draft");
  if (draft && !draft.disabled && draft.checked) input.draft = true;
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
  const card = $('input[name="tier"]:checked');
  if (!refs.length && !generates(card)) {
    return `Add a photo first (drop it anywhere, paste it, or choose one). ${$("#t2i-note").textContent}`;
  }
  const most = card ? Number(card.dataset.maxRefs) : 0;
  if (card && refs.length > most) {
    return `${card.dataset.title} takes up to ${most} photo${most === 1 ? "" : "s"}; remove ${refs.length - most}, `
      + "or pick a model that takes more.";
  }
  if (!input.prompt) return "Type what should change in the instruction box.";
  if (maskActive() && !input.lock_mask) {
    return "Paint the area to change on the first reference (Advanced → Pixel lock), or choose Auto.";
  }
  if (($('input[name="seed_mode"]:checked') || {}).value === "fixed" && input.seed === undefined) {
    return "Type a seed number, or choose Random.";
  }
  return null;
}

// Submit one run of `n` outputs: one prediction with num_outputs (each output charged; with a fixed seed the
// variations take seed, seed+1, ... so each is reproducible).
async function submitEdit(input, tier, n = 1) {
  showError($("#form-error"), "");
  showError($("#result-error"), "");
  const problem = formProblem(input);
  if (problem) { showError($("#form-error"), problem); return; }
  const made = [];
  const one = n > 1 ? {...input, num_outputs: n} : input;
  try {
    made.push(await api("POST", "/v1/predictions", {model: modelOf(tier), input: one}));
  } catch (err) {
    showError($("#form-error"), err.message);
    return;
  }
  if (!made.length) return;
  studio.lastInput = {input, tier};
  studio.beforeUrl = refs.length ? refs[0].url : null;  // text to image: nothing to compare with
  if (studio.session && studio.parent) {
    for (const pred of made) {
      try {
        await api("POST", `/v1/sessions/${studio.session}/turns`, {prediction: pred.id, parent: studio.parent});
      } catch (err) { showError($("#form-error"), `The edit runs, but the session could not record it: ${err.message}`); }
    }
  }
  refreshCredits();
  track(made);
}

function setStatus(text) { $("#job-status").textContent = text; }

function stopWatching() {
  if (studio.stream) studio.stream.close();
  studio.stream = null;
  studio.timers.forEach(clearInterval);
  studio.timers = [];
}

// On a phone the settings sit below the canvas: bring the canvas back into view when something runs there.
function revealCanvas() {
  const canvas = $("#canvas");
  if (canvas && window.matchMedia("(max-width: 959.98px)").matches) canvas.scrollIntoView({block: "start"});
}

function track(preds) {
  stopWatching();
  revealCanvas();
  studio.batch = preds.map((p) => ({...p}));
  studio.current = studio.batch[0];
  $("#job").hidden = false;
  $("#cancel").disabled = false;
  $("#cancel").hidden = false;
  $("#progress").hidden = false;
  $("#progress").value = 0;
  const asked = (preds[0].input || {}).num_outputs || preds.length;
  setStatus(asked > 1 ? `Queued ${asked} variations…` : "Queued…");
  if (preds.length === 1) { watchOne(studio.batch[0]); return; }
  const poll = async () => {
    for (const p of studio.batch) {
      if (TERMINAL.includes(p.status)) continue;
      try { Object.assign(p, await api("GET", `/v1/predictions/${p.id}`)); } catch (err) { /* next round */ }
    }
    const done = studio.batch.filter((p) => TERMINAL.includes(p.status)).length;
    const avg = studio.batch.reduce((s, p) => s + (TERMINAL.includes(p.status) ? 1 : p.progress || 0), 0) / studio.batch.length;
    $("#progress").value = Math.round(avg * 100);
    setStatus(`Rendering ${studio.batch.length} variations… ${done} done`);
    if (done === studio.batch.length) { stopWatching(); batchFinished(); }
  };
  poll();
  studio.timers.push(setInterval(poll, 600));
}

function watchOne(pred) {
  const pollQueue = async () => {
    try {
      const q = await api("GET", `/v1/predictions/${pred.id}/queue`);
      if (q.status === "starting") {
        setStatus(q.ahead ? `Waiting: ${q.ahead} edit${q.ahead === 1 ? "" : "s"} ahead of yours.` : "Starting…");
      } else {
        studio.timers.forEach(clearInterval);
      }
    } catch (err) { studio.timers.forEach(clearInterval); }
  };
  pollQueue();
  studio.timers.push(setInterval(pollQueue, 700));
  const es = new EventSource(`/v1/predictions/${pred.id}/stream`);
  studio.stream = es;
  es.addEventListener("progress", (e) => {
    const d = JSON.parse(e.data);
    if (d.status === "processing") {
      studio.timers.forEach(clearInterval);
      $("#progress").value = Math.round(d.progress * 100);
      setStatus(`Rendering… ${Math.round(d.progress * 100)} %`);
    }
  });
  es.addEventListener("completed", (e) => {
    es.close();
    Object.assign(pred, JSON.parse(e.data));
    stopWatching();
    batchFinished();
  });
  es.onerror = () => {
    // The stream closes after "completed"; if it broke earlier, ask once for the state.
    if (es.readyState === EventSource.CLOSED && studio.batch.includes(pred) && !TERMINAL.includes(pred.status)) {
      api("GET", `/v1/predictions/${pred.id}`).then((p) => {
        if (TERMINAL.includes(p.status)) { Object.assign(pred, p); stopWatching(); batchFinished(); }
      }).catch(() => {});
    }
  };
}

function failureText(pred) {
  const why = {canceled: "Canceled; the credits held for it were released.",
               aborted: "The deadline passed before it started; nothing was charged.",
               failed: `The edit failed: ${pred.error || "no reason given"}. The credits held for it were released.`};
  return why[pred.status] || pred.status;
}

function batchFinished() {
  if (studio.batch.done) return;
  studio.batch.done = true;
  $("#cancel").hidden = true;
  $("#progress").hidden = true;
  refreshCredits();
  const good = studio.batch.filter((p) => p.status === "succeeded");
  if (!good.length) {
    setStatus(failureText(studio.batch[0]));
    return;
  }
  const only = studio.batch.length === 1 ? studio.batch[0] : null;
  if (only && Array.isArray(only.output)) {
    // One prediction with several outputs: each becomes a variation to choose from.
    const outs = (only.result || {}).outputs || [];
    studio.batch = only.output.map((url, i) => ({...only, output: url,
      result: {...only.result, ...(outs[i] || {})}}));
    studio.batch.done = true;
    setStatus(`Done: ${studio.batch.length} variations · ${only.cost} credits. Choose one to continue.`);
    showGrid();
    $("#job").hidden = true;
  } else if (only) {
    const pred = only;
    setStatus(`Done in ${((pred.metrics || {}).predict_time || 0).toFixed(1)} s · ${pred.cost} credits.`);
    showResult(pred);
    $("#job").hidden = true;  // the result bar says it all; the picture stays clear
  } else {
    const cost = good.reduce((s, p) => s + (p.cost || 0), 0);
    setStatus(`Done: ${good.length} of ${studio.batch.length} variations · ${cost} credits. Choose one to continue.`);
    showGrid();
    $("#job").hidden = true;
  }
  if (studio.session) loadSession();
}

function showGrid() {
  const grid = $("#variations");
  grid.replaceChildren();
  studio.batch.forEach((p, i) => {
    const label = `Variation ${i + 1}${p.result && p.result.seed !== undefined ? `, seed ${p.result.seed}` : ""}`;
    let body;
    if (p.status === "succeeded") {
      const size = ((p.result || {}).recipe || {}).output_size || [1, 1];
      body = el("button", {type: "button", "aria-label": `${label}: show it and continue from it`},
                el("img", {src: p.output, alt: "", width: size[0], height: size[1]}),
                el("span", {class: "label", text: label}));
      body.addEventListener("click", () => showResult(p));
    } else {
      body = el("span", {class: "status-box", text: `${label}: ${p.status}`});
    }
    grid.append(el("li", {"data-testid": "variation", "data-status": p.status}, body));
  });
  showCanvas("grid");
  $("#result").hidden = true;
}

const ROUTINE = /(resized to|snapped to|stitched into|rotated upright|converted from 16-bit|filled with white|output restored)/i;

function identityWords(identity) {
  if (!identity || identity.similarity === null || identity.similarity === undefined) {
    return {text: "Likeness not measured (nothing to compare)", cls: "muted", title: "No face or subject was found to compare."};
  }
  const score = `similarity ${identity.similarity.toFixed(2)} (0 to 1)`;
  const d = identity.details || {};
  if (identity.measured) {
    if ((d.lost_faces || 0) > 0 || d.output_faces === 0) {
      return {text: "Face not found in the result", cls: "warn", title: score};
    }
    return identity.passed ? {text: "Same person", cls: "good", title: `${score}; 0.5 and above is the same person`}
      : {text: "Looks like a different person", cls: "warn", title: `${score}; under 0.5`};
  }
  return identity.passed ? {text: "Subject kept (no face to compare)", cls: "good", title: score}
    : {text: "Subject changed noticeably (no face to compare)", cls: "warn", title: score};
}

function showResult(pred) {
  studio.current = pred;
  const result = pred.result || {};
  const recipe = result.recipe || {};
  const size = recipe.output_size || [1, 1];
  studio.shown = size;
  for (const img of [$("#after"), $("#before")]) { img.width = size[0]; img.height = size[1]; }
  $("#after").src = pred.output;
  $("#before").src = studio.beforeUrl || pred.output;
  $("#compare").classList.toggle("solo", !studio.beforeUrl);
  setCompare(50);
  showCanvas("result");
  const words = identityWords(result.identity);
  const badge = $("#identity");
  badge.textContent = words.text;
  badge.className = `badge ${words.cls}`;
  badge.title = words.title;
  badge.setAttribute("aria-label", `${words.text}: ${words.title}`);
  badge.hidden = !studio.beforeUrl;  // a picture from words has no likeness to measure
  $("#lock-info").textContent = lockText(result, recipe);
  const many = (pred.input || {}).num_outputs || 1;
  $("#result-meta").textContent = `seed ${result.seed} · ${size[0]}×${size[1]} · ${pred.model} · ${pred.cost} credits`
    + (many > 1 ? ` for ${many} variations` : "");
  const warnings = $("#warnings");
  const notes = $("#notes");
  warnings.replaceChildren();
  notes.replaceChildren();
  for (const w of result.warnings || []) (ROUTINE.test(w) ? notes : warnings).append(el("li", {text: w}));
  $("#notes-box").hidden = !notes.children.length;
  $("#notes-title").textContent = `Notes (${notes.children.length}): routine adjustments`;
  warnings.hidden = !warnings.children.length;
  const dl = $("#download");
  dl.href = pred.output;
  dl.download = `kontext-${pred.id}.${(recipe.output_format || "png").replace("jpeg", "jpg")}`;
  $("#details-link").href = `/predictions/${pred.id}`;
  const tryModel = $("#try-model");
  tryModel.replaceChildren();
  for (const r of $$('input[name="tier"]')) {
    if (r.disabled || r.value === pred.model || r.dataset.model.split("/").pop() === pred.model) continue;
    if (!studio.beforeUrl && !generates(r)) continue;  // a picture from words needs a model that generates
    tryModel.append(el("option", {value: r.value, text: `${r.dataset.title} (${document.querySelector(".credits strong") ? `${r.dataset.price} cr` : "free"})`}));
  }
  tryModel.disabled = !tryModel.children.length;
  $("#try-go").disabled = !tryModel.children.length;
  if (!tryModel.children.length) tryModel.append(el("option", {text: "No other model here"}));
  $("#back-to-grid").hidden = studio.batch.length < 2;
  $("#result").hidden = false;
  fitCanvas();
  revealCanvas();
}

function setCompare(v) {
  $("#compare-range").value = v;
  $("#before").style.clipPath = `inset(0 ${100 - v}% 0 0)`;
  $(".divider").style.left = `${v}%`;
}

// Download in the format asked: PNG is the file as made; JPEG and WebP are converted by the server, which
// keeps the recipe and signs the copy's content credentials (a browser re-encode would drop both).
async function download(e) {
  const format = $("#download-format").value;
  const pred = studio.current;
  if (!pred || format === "png") return;
  e.preventDefault();
  try {
    const resp = await fetch(pred.output.replace("/v1/files/", `/v1/convert/${format}/`), {credentials: "same-origin"});
    if (!resp.ok) throw new Error(`the server answered ${resp.status}`);
    const url = URL.createObjectURL(await resp.blob());
    const a = el("a", {href: url, download: `kontext-${pred.id}.${format === "jpeg" ? "jpg" : format}`});
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (err) {
    showError($("#result-error"), `The download could not be converted: ${err.message}`);
  }
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
  studio.view = "image";
  refs.splice(0, refs.length, {file: upload.id, url: upload.urls.get, name: "previous result", role: "subject"});
  refsChanged();
  showCanvas("image");
  $("#job").hidden = true;
  checkRef(refs[0]);
  $("#prompt").value = "";
  $("#prompt").dispatchEvent(new Event("input", {bubbles: true}));
  $("#prompt").focus();
}

async function loadSession() {
  if (!studio.session) return;
  const box = $("#session");
  const s = await api("GET", `/v1/sessions/${studio.session}`);
  const strip = $("#strip");
  strip.replaceChildren();
  for (const t of s.turns) {
    const btn = el("button", {type: "button", "aria-label": `Continue from turn ${t.turn}: ${t.prompt}`});
    if (t.output) btn.append(el("img", {src: t.output, alt: "", width: 64, height: 64}));
    // Drift grows as the chain moves away from the origin (0 = unchanged): never the similarity itself.
    const drift = t.drift && t.drift.value !== null && t.drift.value !== undefined
      ? ` · drift ${t.drift.value.toFixed(2)}` : "";
    btn.append(el("span", {text: `Turn ${t.turn}${t.branch ? " (branch)" : ""}${drift}`}));
    btn.disabled = !t.output;
    btn.addEventListener("click", () => selectTurn(t));
    strip.append(el("li", {class: "turn" + (t.prediction === studio.parent ? " current" : "") + (t.branch ? " branch" : ""),
                           "data-testid": "turn"}, btn));
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
    studio.view = "image";
    refsChanged();
    showCanvas(refs.length ? "image" : "empty");
    refs.forEach((ref) => checkRef(ref));
    $("#prompt").value = input.prompt || "";
    $("#prompt").dispatchEvent(new Event("input", {bubbles: true}));
    const tier = $(`input[name="tier"][value="${r.tier}"]`);
    if (tier && !tier.disabled) tier.checked = true;
    const aspect = $(`input[name="aspect_ratio"][value="${input.aspect_ratio || "match_input_image"}"]`);
    if (aspect) aspect.checked = true;
    if (input.seed !== undefined && input.seed !== null) {
      $('input[name="seed_mode"][value="fixed"]').checked = true;
      $("#seed").value = input.seed;
    }
    $("#steps").value = input.num_inference_steps ?? "";
    $("#guidance").value = input.guidance ?? "";
    $("#acceleration").value = input.acceleration || "";
    $("#draft").checked = !!input.draft;
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
    const btn = el("button", {type: "button", class: "small", text: `Add ${lora.name || lora.id}`});
    btn.addEventListener("click", () => {
      const area = $("#loras");
      area.value = (area.value.trim() ? area.value.trim() + "\n" : "") + `${lora.id}:1.0`;
    });
    box.append(btn);
  }
}

async function tryAnotherModel() {
  const tier = $("#try-model").value;
  showError($("#result-error"), "");
  try {
    const cur = studio.current;
    let pred;
    if (((cur.input || {}).num_outputs || 1) > 1) {
      // One of several variations: the same recipe with this variation's seed, one output.
      const r = await api("GET", `/v1/predictions/${cur.id}/recipe`);
      const input = {...r.input, seed: cur.result.seed};
      delete input.num_outputs;
      if (hosted($(`input[name="tier"][value="${tier}"]`))) { delete input.acceleration; delete input.draft; }
      pred = await api("POST", "/v1/predictions", {model: modelOf(tier), input});
    } else {
      pred = await api("POST", `/v1/predictions/${cur.id}/promote`, {tier});
    }
    const card = $(`input[name="tier"][value="${tier}"]`);
    if (card) { card.checked = true; updatePrice(); }
    refreshCredits();
    track([pred]);
  } catch (err) { showError($("#result-error"), `${$("#try-model").selectedOptions[0].textContent}: ${err.message}`); }
}

// ---- tools beside the canvas: free tools answer at once, AI tools are edits (priced like one) ------------
const CANVAS_TOOL_CATEGORIES = ["cut-out", "enhance", "faces", "geometry"];

function oneClick(tool) {
  const needs = (tool.params || []).filter((p) => p.default === null && !p.auto);
  return !needs.length && tool.mask !== "required" && (!tool.inputs || tool.inputs.min <= 1);
}

async function loadTools() {
  const box = $("#tools");
  if (!box) return;
  let listing;
  try { listing = await api("GET", "/v1/tools"); } catch (err) { return; }  // a server without tools: no panel
  const list = $("#tool-list");
  list.replaceChildren();
  studio.aiTools.clear();
  for (const t of (listing.free || []).filter((x) => CANVAS_TOOL_CATEGORIES.includes(x.category) && oneClick(x))) {
    const btn = el("button", {type: "button", "data-tool": t.name, title: t.description},
                   el("span", {text: t.title}), el("span", {class: "pill free", text: "free"}));
    if (t.installed === false) {
      btn.title = "Its model is not installed on this server.";
      btn.append(el("span", {class: "visually-hidden", text: ": its model is not installed on this server"}));
    }
    btn.disabled = t.installed === false;
    btn.addEventListener("click", () => runFreeTool(t));
    list.append(el("li", {}, btn));
  }
  for (const t of (listing.ai || []).filter(oneClick)) {
    const btn = el("button", {type: "button", "data-tool": t.name, "data-ai-tool": "yes", title: t.description},
                   el("span", {text: t.title}), el("span", {class: "pill"}));
    btn.addEventListener("click", () => runAiTool(t));
    studio.aiTools.set(t.name, {tool: t, button: btn});
    list.append(el("li", {}, btn));
  }
  updateToolPrices();
  box.hidden = !list.children.length;
}

// The name prices are listed under: the last part of the catalogue name (flux-2-klein-4b).
function shortModel(name) { return String(name).split("/").pop(); }

// AI tools are edits: they run on the chosen model when it edits (any catalogue model), else on Kontext [dev].
function toolModel(tool) {
  const card = $('input[name="tier"]:checked');
  const chosen = card && card.dataset.edits === "yes" ? modelOf(card.value) : null;
  return chosen && (tool.credits || {})[shortModel(chosen)] !== undefined ? chosen : "black-forest-labs/flux-kontext-dev";
}

// Each AI tool's pill says what it costs on the model it would run on (they follow the model cards).
function updateToolPrices() {
  const paid = document.querySelector(".credits strong");
  for (const {tool, button} of studio.aiTools.values()) {
    const model = toolModel(tool);
    const price = (tool.credits || {})[shortModel(model)];
    const card = $(`input[name="tier"][data-model="${model}"]`);
    button.querySelector(".pill").textContent = paid ? `${price ?? "?"} cr` : "free";
    button.dataset.model = model;
    button.title = `${tool.description} Runs as an edit on ${card ? card.dataset.title : shortModel(model)}.`;
  }
}

// The picture in the canvas as one of your files: the shown result (uploaded again) or the first reference.
async function canvasFile() {
  if (studio.view === "result" && studio.current && studio.current.output) {
    const blob = await (await fetch(studio.current.output, {credentials: "same-origin"})).blob();
    const up = await api("POST", "/v1/files", blob, blob.type || "image/png");
    return {id: up.id, parent: studio.current.id};
  }
  if (refs[0]) return {id: refs[0].file, parent: null};
  return null;
}

async function runFreeTool(tool) {
  const status = $("#tool-status");
  const source = await canvasFile().catch(() => null);
  if (!source) { status.textContent = "Add a photo first: tools work on the picture in the canvas."; return; }
  status.textContent = `${tool.title}: working…`;
  try {
    const resp = await fetch(`/v1/tools/${tool.name}`, {
      method: "POST", credentials: "same-origin",
      headers: {"X-CSRF-Token": csrf(), "Content-Type": "application/json", "Accept": "application/json"},
      body: JSON.stringify({images: [source.id], params: {}})});
    const body = await resp.json();
    if (!resp.ok) throw new ApiError(sentence(body.detail || body.title || `the server answered ${resp.status}`));
    const out = body.output;
    refs.splice(0, refs.length ? 1 : 0, {file: out.id, url: out.urls.get, name: `${tool.title} result`, role: "subject"});
    studio.view = "image";
    refsChanged();
    showCanvas("image");
    $("#job").hidden = true;
    checkRef(refs[0]);
    status.textContent = `${tool.title} done (free): the result is now reference 1; type an instruction to edit it.`;
    $("#prompt").focus();
  } catch (err) { status.textContent = `${tool.title}: ${err.message}`; }
}

async function runAiTool(tool) {
  const status = $("#tool-status");
  const source = await canvasFile().catch(() => null);
  if (!source) { status.textContent = "Add a photo first: tools work on the picture in the canvas."; return; }
  try {
    const model = toolModel(tool);
    const card = $(`input[name="tier"][data-model="${model}"]`);
    const pred = await api("POST", `/v1/tools/${tool.name}`, {input_image: source.id, model});
    status.textContent = `${tool.title}: running as an edit on ${card ? card.dataset.title : shortModel(model)} (${pred.cost} credits).`;
    studio.beforeUrl = studio.view === "result" && studio.current ? studio.current.output : (refs[0] || {}).url;
    refreshCredits();
    track([pred]);
  } catch (err) { status.textContent = `${tool.title}: ${err.message}`; }
}

function setupStudio() {
  const form = $("#edit-form");
  if (!form) return;
  form.addEventListener("submit", (e) => { e.preventDefault(); submitEdit(collectInput(), selectedTier(), outputs()); });
  // Ctrl+Enter (Cmd+Enter on a Mac) generates from anywhere on the page.
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
  });
  $$('input[name="tier"]').forEach((r) => r.addEventListener("change", updatePrice));
  if ($("#acceleration")) $("#acceleration").addEventListener("change", updateSpeed);
  $$('input[name="aspect_ratio"]').forEach((r) => r.addEventListener("change", () => { updateEmpty(); fitCanvas(); }));
  $("#num-outputs").addEventListener("change", updatePrice);
  $("#seed").addEventListener("input", () => { $('input[name="seed_mode"][value="fixed"]').checked = true; });
  $("#cancel").addEventListener("click", async () => {
    const running = studio.batch.filter((p) => !TERMINAL.includes(p.status));
    setStatus("Canceling…");
    try {
      for (const p of running) Object.assign(p, await api("POST", `/v1/predictions/${p.id}/cancel`));
      stopWatching();
      batchFinished();  // the answers already say canceled (or finished, if one ended first)
    } catch (err) { setStatus(err.message); }
  });
  $("#compare-range").addEventListener("input", (e) => setCompare(Number(e.target.value)));
  $("#download").addEventListener("click", download);
  $("#use-input").addEventListener("click", () => useAsInput(studio.current));
  $("#reuse").addEventListener("click", () => reuseSettings(studio.current.id));
  const again = (n) => {
    if (!studio.lastInput) return;
    const {input, tier} = studio.lastInput;
    const fresh = {...input};
    delete fresh.seed;
    $('input[name="seed_mode"][value="random"]').checked = true;  // the form says what was sent
    submitEdit(fresh, tier, n);
  };
  $("#new-seed").addEventListener("click", () => again(1));
  $("#more-variations").addEventListener("click", () => again(4));
  $("#try-go").addEventListener("click", tryAnotherModel);
  $("#back-to-grid").addEventListener("click", showGrid);
  $("#undo").addEventListener("click", undo);
  document.addEventListener("click", (e) => {
    const btn = e.target.closest("[data-rewrite]");
    if (!btn) return;
    $("#prompt").value = btn.dataset.rewrite;
    $("#prompt").dispatchEvent(new Event("input", {bubbles: true}));
    $("#prompt").focus();
  });
  if (window.ResizeObserver) new ResizeObserver(() => fitCanvas()).observe($("#canvas"));
  updatePrice();
  listLoras();
  loadTools();
  showCanvas("empty");
  const reuse = new URLSearchParams(location.search).get("reuse");
  if (reuse) reuseSettings(reuse);
}

// ---- series -----------------------------------------------------------------------------------------
// One scene per line; lines starting with # are comments (as in the command line's scene files).
function sceneLines() {
  return $("#scenes").value.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
}

function updateSeriesPrice() {
  const n = sceneLines().length;
  $("#scene-count").textContent = `${n} scene${n === 1 ? "" : "s"}`;
  const opt = $("#series-tier").selectedOptions[0];
  const each = opt ? Number(opt.dataset.price) : 0;
  const paid = document.querySelector(".credits strong");
  $("#series-submit").textContent = n ? `Render ${n} scene${n === 1 ? "" : "s"} · ${paid ? `${each * n} credits` : "free"}`
    : "Render series";
  // Draft halves the steps of a model this server runs; a hosted model chooses its own steps.
  const draft = $("#series-draft");
  if (draft) {
    const hostedModel = !!opt && opt.dataset.hosted === "yes";
    draft.disabled = hostedModel;
    if (hostedModel) draft.checked = false;
    $("#series-draft-note").textContent = hostedModel
      ? `${opt.textContent.split(" · ")[0]} runs on Black Forest Labs' servers, which choose their own steps: no draft.`
      : "A quick look at every scene for the same price; keep the seed and turn Draft off for the full pictures.";
  }
}

function setupSeries() {
  const form = $("#series-form");
  if (!form) return;
  $("#scenes").addEventListener("input", updateSeriesPrice);
  $("#series-tier").addEventListener("change", updateSeriesPrice);
  updateSeriesPrice();
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    showError($("#form-error"), "");
    const scenes = sceneLines();
    if (!refs.length) { showError($("#form-error"), "Add at least one reference photo first."); return; }
    if (!scenes.length) { showError($("#form-error"), "Type at least one scene, one per line (lines starting with # are comments)."); return; }
    const input = refsInput();
    const aspect = $("#series-aspect").value;
    if (aspect !== "match_input_image") input.aspect_ratio = aspect;
    const seed = $("#series-seed").value.trim();
    if (seed) input.seed = Number(seed);
    if ($("#series-draft") && $("#series-draft").checked && !$("#series-draft").disabled) input.draft = true;
    let series;
    try {
      series = await api("POST", "/v1/series", {model: $("#series-tier").selectedOptions[0].dataset.model || $("#series-tier").value, input, scenes});
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
  $("#series-empty").hidden = series.items.length > 0;
  series.items.forEach((it, i) => {
    const thumb = el("span", {class: "thumb"});
    if (it.output) {
      thumb.append(el("img", {src: it.output, alt: `Scene ${i + 1}: ${it.prompt}`, width: 180, height: 180}));
    } else {
      thumb.append(el("span", {class: `status-box ${it.status}`,
                               text: it.status === "processing" ? `${Math.round(it.progress * 100)} %` : it.status}));
    }
    const meta = el("span", {class: "meta", text: `seed ${it.seed ?? "…"}`});
    if (it.similarity !== null && it.similarity !== undefined) {
      const kept = it.similarity >= 0.5;
      meta.append(el("span", {class: `pill ${kept ? "good" : "bad"}`, title: `similarity ${it.similarity.toFixed(2)} (0 to 1)`,
                              text: kept ? "likeness kept" : "likeness low"}));
    }
    const li = el("li", {class: "tile", "data-testid": "scene", "data-status": it.status}, thumb,
                  el("span", {class: "caption", text: `${i + 1}. ${it.prompt}`}), meta);
    if (it.output) {
      li.append(el("a", {class: "button-like small", href: it.output, download: `scene-${i + 1}.png`,
                         "data-testid": "scene-download", "aria-label": `Download scene ${i + 1}`, text: "Download"}));
    }
    grid.append(li);
  });
  const sheet = $("#contact-sheet");
  const anyDone = series.items.some((it) => it.status === "succeeded");
  sheet.hidden = !(series.done && anyDone);  // only once there are scenes to put on it
  sheet.href = series.urls.contact_sheet;
}

// ---- library ----------------------------------------------------------------------------------------
function libraryQuery() {
  const p = new URLSearchParams();
  const q = $("#q").value.trim();
  if (q) p.set("q", q);
  if ($("#kind").value) p.set("kind", $("#kind").value);
  if ($("#favourites").checked) p.set("favourites", "true");
  return p.toString();
}

async function loadLibrary() {
  const query = libraryQuery();
  history.replaceState(null, "", `/library${query ? "?" + query : ""}`);
  let found;
  try { found = (await api("GET", `/v1/library?${query}`)).results; } catch (err) {
    showError($("#library-error"), err.message);
    return;
  }
  showError($("#library-error"), "");
  const list = $("#library");
  list.replaceChildren(...found.map(libraryTile));
  $("#library-status").textContent = found.length ? `${found.length} picture${found.length === 1 ? "" : "s"}`
    : (query ? "Nothing matches." : "Nothing here yet: your edits, series and sessions will appear here.");
}

function libraryTile(it) {
  const thumb = el("span", {class: "thumb"});
  if (it.output) thumb.append(el("img", {src: it.output, alt: `Result of: ${it.prompt}`, width: 180, height: 180, loading: "lazy"}));
  else thumb.append(el("span", {class: `status-box ${it.status}`, text: it.status}));
  const link = el("a", {href: `/predictions/${it.id}`}, thumb, el("span", {class: "caption", text: it.prompt || "(no prompt)"}));
  const meta = el("span", {class: "meta"}, el("span", {class: "pill", text: it.kind}),
                  el("span", {class: "pill", text: it.model.replace("flux-kontext-", "")}));
  if (it.status !== "succeeded") meta.append(el("span", {class: `pill ${it.status}`, text: it.status}));
  const fav = el("button", {type: "button", class: "small fav", "aria-pressed": it.favourite ? "true" : "false",
                            "aria-label": `Favourite: ${it.prompt}`, "data-testid": "favourite", text: it.favourite ? "★" : "☆"});
  fav.addEventListener("click", async () => {
    const now = fav.getAttribute("aria-pressed") !== "true";
    try {
      await api("PUT", `/v1/library/${it.id}/favourite`, {favourite: now});
      fav.setAttribute("aria-pressed", String(now));
      fav.textContent = now ? "★" : "☆";
    } catch (err) { showError($("#library-error"), err.message); }
  });
  const remove = el("button", {type: "button", class: "small danger", "data-testid": "remove",
                               "aria-label": `Remove from library: ${it.prompt}`, text: "Remove"});
  remove.addEventListener("click", async () => {
    if (!window.confirm("Remove this picture from your library? Its share link stops working.")) return;
    try { await api("DELETE", `/v1/library/${it.id}`); li.remove(); } catch (err) { showError($("#library-error"), err.message); }
  });
  const actions = el("div", {class: "actions"}, fav);
  const panel = el("div", {class: "share-panel", hidden: true, "data-testid": "share-panel"});
  if (it.output) {
    const shareBtn = el("button", {type: "button", class: "small", "aria-expanded": "false", "data-testid": "share",
                                   "aria-label": `Share: ${it.prompt}`, text: it.share ? "Shared" : "Share"});
    shareBtn.addEventListener("click", () => {
      panel.hidden = !panel.hidden;
      shareBtn.setAttribute("aria-expanded", String(!panel.hidden));
    });
    actions.append(shareBtn);
    sharePanel(panel, it, shareBtn);
  }
  actions.append(remove);
  const li = el("li", {class: "tile", "data-testid": "library-item", "data-id": it.id}, link, meta, actions, panel);
  return li;
}

function sharePanel(panel, it, shareBtn) {
  const n = it.id;
  const prompt = el("input", {type: "checkbox", id: `sp-${n}`});
  const model = el("input", {type: "checkbox", id: `sm-${n}`});
  prompt.checked = !!(it.share && it.share.show_prompt);
  model.checked = !!(it.share && it.share.show_model);
  const url = el("input", {type: "url", readonly: true, id: `su-${n}`, "data-testid": "share-url", "aria-label": "Public link"});
  const status = el("span", {class: "muted tiny-text", "aria-live": "polite", "data-testid": "share-status"});
  const make = el("button", {type: "button", class: "small primary", "data-testid": "share-create"});
  const copy = el("button", {type: "button", class: "small", "data-testid": "share-copy", text: "Copy link"});
  const revoke = el("button", {type: "button", class: "small danger", "data-testid": "share-revoke", text: "Stop sharing"});
  const sync = () => {
    url.value = it.share ? it.share.url : "";
    url.hidden = copy.hidden = revoke.hidden = !it.share;
    make.textContent = it.share ? "Update link" : "Create public link";
    shareBtn.textContent = it.share ? "Shared" : "Share";
  };
  make.addEventListener("click", async () => {
    try {
      it.share = await api("POST", `/v1/library/${it.id}/share`, {show_prompt: prompt.checked, show_model: model.checked});
      sync();
      status.textContent = "Anyone with the link sees this picture" + (prompt.checked || model.checked ? " and what you ticked." : " only.");
    } catch (err) { status.textContent = err.message; }
  });
  copy.addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(url.value); status.textContent = "Copied."; } catch (err) {
      url.select();
      status.textContent = "Select the link and copy it (the browser did not allow copying).";
    }
  });
  revoke.addEventListener("click", async () => {
    try {
      await api("DELETE", `/v1/shares/${it.share.id}`);
      it.share = null;
      sync();
      status.textContent = "The link is switched off: it shows nothing any more.";
    } catch (err) { status.textContent = err.message; }
  });
  panel.append(
    el("p", {class: "tiny-text muted", text: "The public page shows the picture; tick what else it may show."}),
    el("label", {class: "small-text"}, prompt, " the instruction"), el("label", {class: "small-text"}, model, " the model"),
    el("div", {class: "actions"}, make, copy, revoke), url, status);
  sync();
}

function setupLibrary() {
  const form = $("#library-filters");
  if (!form) return;
  const params = new URLSearchParams(location.search);
  $("#kind").value = params.get("kind") || "";
  $("#favourites").checked = params.get("favourites") === "true";
  let timer = null;
  form.addEventListener("submit", (e) => { e.preventDefault(); loadLibrary(); });
  $("#q").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(loadLibrary, 250); });
  $("#kind").addEventListener("change", loadLibrary);
  $("#favourites").addEventListener("change", loadLibrary);
  loadLibrary();
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
      $("#copy-status").textContent = "";
      $("#new-key").hidden = false;
      const revoke = el("button", {type: "button", class: "small danger", "data-revoke": k.id, "data-name": k.name || k.prefix,
                                   text: "Revoke"});
      const tr = el("tr", {"data-key-id": k.id}, el("td", {class: "k-name", text: k.name || "—"}),
                    el("td", {class: "k-key"}, el("code", {text: `${k.prefix}…`}), " ", el("span", {class: "state pill", text: "active"})),
                    el("td", {class: "small-text k-used", text: "never"}), el("td", {class: "k-act"}, revoke));
      const empty = $("#keys-body tr.empty");
      if (empty) empty.remove();
      $("#keys-body").append(tr);
    } catch (err) { showError($("#key-error"), err.message); }
  });
  $("#copy-key").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText($("#new-key-value").textContent);
      $("#copy-status").textContent = "Copied.";
    } catch (err) { $("#copy-status").textContent = "Select the key and copy it (the browser did not allow copying)."; }
  });
  document.addEventListener("click", async (e) => {
    const btn = e.target.closest("[data-revoke]");
    if (!btn) return;
    if (!window.confirm(`Revoke the key "${btn.dataset.name}"? Scripts using it stop working at once.`)) return;
    try {
      await api("DELETE", `/v1/account/keys/${btn.dataset.revoke}`);
      const row = btn.closest("tr");
      row.querySelector(".state").textContent = "revoked";
      btn.remove();
    } catch (err) { showError($("#key-error"), err.message); }
  });
}

// ---- settings (administrators) ------------------------------------------------------------------------
function setupSettings() {
  const form = $("#bfl-form");
  if (!form) return;
  const state = $("#bfl-state");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    showError($("#bfl-error"), "");
    try {
      await api("PUT", "/v1/admin/settings/bfl-api-key", {key: $("#bfl-key").value});
      $("#bfl-key").value = "";  // never kept in the page
      state.textContent = "A key is stored (saved just now). The hosted models are available.";
      $("#bfl-remove").hidden = false;
    } catch (err) { showError($("#bfl-error"), err.message); }
  });
  $("#bfl-remove").addEventListener("click", async () => {
    if (!window.confirm("Remove the stored BFL API key? The hosted models stop working at once.")) return;
    try {
      await api("DELETE", "/v1/admin/settings/bfl-api-key");
      state.textContent = "No key is stored here.";
      $("#bfl-remove").hidden = true;
    } catch (err) { showError($("#bfl-error"), err.message); }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupSettings();
  setupPicking();
  setupStudio();
  setupMask();
  setupSeries();
  setupLibrary();
  setupAccount();
});
