// clipgan web page: plain JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

const $ = (sel) => document.querySelector(sel);
const store = {
  get access() { return localStorage.getItem("clipgan.access"); },
  get refresh() { return localStorage.getItem("clipgan.refresh"); },
  save(tokens) {
    localStorage.setItem("clipgan.access", tokens.access_token);
    localStorage.setItem("clipgan.refresh", tokens.refresh_token);
  },
  clear() { localStorage.removeItem("clipgan.access"); localStorage.removeItem("clipgan.refresh"); },
};
const streams = new Map();
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

function say(text, ok = false) {
  const box = $("#message");
  box.textContent = text || "";
  box.hidden = !text;
  box.classList.toggle("ok", ok);
}

function describe(detail) {
  if (Array.isArray(detail)) return detail.map((e) => `${e.loc.join(".")}: ${e.msg}`).join("; ");
  return String(detail);
}

async function api(path, options = {}, retry = true) {
  const headers = Object.assign({}, options.headers || {});
  if (store.access) headers.Authorization = `Bearer ${store.access}`;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401 && retry && store.refresh) {
    const refreshed = await fetch("/v1/auth/refresh", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refresh_token: store.refresh }),
    });
    if (refreshed.ok) { store.save(await refreshed.json()); return api(path, options, false); }
    store.clear(); show();
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = describe((await response.json()).detail); } catch (e) { /* not JSON */ }
    throw new Error(detail);
  }
  return response.status === 204 ? null : response.json();
}

async function signIn(username, password) {
  const body = new URLSearchParams({ username, password });
  const response = await fetch("/v1/auth/token", { method: "POST", body });
  const data = await response.json();
  if (!response.ok) throw new Error(describe(data.detail));
  store.save(data);
}

function card(job) {
  let node = document.getElementById(`job-${job.id}`);
  if (!node) {
    node = $("#job-card").content.firstElementChild.cloneNode(true);
    node.id = `job-${job.id}`;
    // cancel_only: a job that finished meanwhile keeps its picture
    node.querySelector(".cancel").onclick = () => api(`/v1/jobs/${job.id}?cancel_only=true`, { method: "DELETE" }).catch((e) => say(e.message));
    node.querySelector(".delete").onclick = () => deleteJob(node, job.id);
    node.querySelector(".rerun").onclick = () => submit(node.dataset.request).catch((e) => say(e.message));
    node.querySelector(".open").onclick = () => openLarge(JSON.parse(node.dataset.job));
    node.querySelector(".use-seed").onclick = () => useSeed(JSON.parse(node.dataset.job));
    $("#jobs").prepend(node);
  }
  node.dataset.job = JSON.stringify(job);
  node.dataset.request = JSON.stringify(job.request);
  node.dataset.status = job.status;
  node.querySelector(".prompt").textContent = job.request.prompt || `random character (seed ${job.request.seed ?? "random"})`;
  const bar = node.querySelector("progress");
  bar.max = Math.max(job.progress.total, 1);
  bar.value = job.status === "succeeded" ? bar.max : job.progress.step;
  let status = job.status;
  if (job.status === "queued" && job.queue_position) status += ` · #${job.queue_position} in line`;
  if (job.starting_gpu && !TERMINAL.has(job.status)) status += " · starting a GPU";
  if (job.eta_s && !TERMINAL.has(job.status)) status += ` · about ${Math.ceil(job.eta_s)} s`;
  if (job.progress.score !== null && job.status === "running") status += ` · score ${job.progress.score.toFixed(3)}`;
  if (job.error && job.status !== "succeeded") status += ` · ${job.error}`;
  node.querySelector(".status").textContent = status;
  node.querySelector(".details").textContent = details(job);
  const img = node.querySelector("img");
  img.alt = `Picture for “${node.querySelector(".prompt").textContent}”`;
  const src = job.image_url || job.preview_url;
  if (src && img.dataset.src !== src.split("?")[0]) { img.src = src; img.dataset.src = src.split("?")[0]; img.hidden = false; }
  img.classList.toggle("result", Boolean(job.image_url));
  const download = node.querySelector(".download");
  download.hidden = !job.image_url;
  if (job.image_url) { download.href = job.image_url; download.download = `clipgan-${job.id}.png`; }
  node.querySelector(".open").hidden = !job.image_url;
  node.querySelector(".use-seed").hidden = job.seed === null || job.seed === undefined;
  node.querySelector(".cancel").hidden = TERMINAL.has(job.status);
  node.querySelector(".rerun").hidden = !TERMINAL.has(job.status);
  node.querySelector(".delete").hidden = !TERMINAL.has(job.status);
  return node;
}

async function deleteJob(node, id) {
  if (!confirm("Delete this picture? Its links stop working. This cannot be undone.")) return;
  try {
    await api(`/v1/jobs/${id}`, { method: "DELETE" });
    node.remove();
    say("Picture deleted.", true);
  } catch (e) { say(e.message); }
}

function details(job) {
  const parts = [];
  if (job.progress.score !== null && job.status === "succeeded") parts.push(`score ${job.progress.score.toFixed(3)}`);
  if (job.seed !== null && job.seed !== undefined) parts.push(`seed ${job.seed}`);
  parts.push(`creativity ${job.request.psi ?? "model default"}`);
  if (job.request.upscale && job.request.upscale > 1) parts.push(`${job.request.upscale}× upscale`);
  return parts.join(" · ");
}

function openLarge(job) {
  const viewer = $("#viewer");
  const img = viewer.querySelector("img");
  img.src = job.image_url;
  img.alt = `Picture for “${job.request.prompt || "a random character"}”`;
  viewer.querySelector(".details").textContent = details(job);
  $("#share-link").value = new URL(job.image_url, location.origin).href;
  $("#viewer-download").href = job.image_url;
  $("#viewer-download").download = `clipgan-${job.id}.png`;
  viewer.showModal();
}

function useSeed(job) {
  const f = $("#generate-form");
  f.seed.value = String(job.seed);
  if (job.request.psi !== null && job.request.psi !== undefined) {
    f.psi.value = job.request.psi;
    $("#psi-value").textContent = Number(job.request.psi).toFixed(2);
  }
  if ($("#viewer").open) $("#viewer").close();
  f.prompt.focus();
  say("");
}

function showSample(name) {
  const figure = $("#sample");
  const img = figure.querySelector("img");
  const url = `/v1/sample.png?seed=${encodeURIComponent(name)}`;
  img.onerror = async () => {
    figure.hidden = true;
    try { await api(url); } catch (e) { say(`no character right now: ${e.message}`); }
  };
  img.onload = () => { figure.hidden = false; say(""); };
  img.alt = `A character for “${name}”`;
  img.src = url;
  figure.dataset.seed = name;
  figure.querySelector(".caption").textContent = `Seed “${name}”`;
}

function follow(job) {
  card(job);
  if (TERMINAL.has(job.status) || streams.has(job.id)) return;
  const source = new EventSource(job.events_url);
  streams.set(job.id, source);
  for (const name of ["status", "progress", "preview", "done"]) {
    source.addEventListener(name, (event) => {
      const data = JSON.parse(event.data);
      if (data.id) card(data);
      if (name === "done") { source.close(); streams.delete(job.id); }
    });
  }
  source.onerror = () => { source.close(); streams.delete(job.id); setTimeout(() => refreshJob(job.id), 2000); };
}

async function refreshJob(id) {
  try { follow(await api(`/v1/jobs/${id}`)); } catch (e) { say(e.message); }
}

async function submit(requestJson, file) {
  say("");
  let options;
  if (file) {
    const form = new FormData();
    form.append("request", requestJson);
    form.append("image_prompt", file);
    options = { method: "POST", body: form };
  } else {
    options = { method: "POST", body: requestJson, headers: { "Content-Type": "application/json" } };
  }
  options.headers = Object.assign(options.headers || {}, { "Idempotency-Key": crypto.randomUUID() });
  follow(await api("/v1/jobs", options));
}

function keyRow(key) {
  const node = $("#key-row").content.firstElementChild.cloneNode(true);
  node.querySelector(".key-name").textContent = key.name;
  node.querySelector(".key-prefix").textContent = `${key.prefix}…`;
  const parts = [key.scopes.includes("jobs:write") ? "read and write" : "read only"];
  parts.push(key.expires_at ? `expires ${new Date(key.expires_at).toLocaleDateString()}` : "never expires");
  parts.push(key.last_used_at ? `last used ${new Date(key.last_used_at).toLocaleString()}` : "never used");
  node.querySelector(".details").textContent = parts.join(" · ");
  const revoke = node.querySelector(".revoke");
  revoke.setAttribute("aria-label", `Revoke key ${key.name}`);
  revoke.onclick = async () => {
    if (!confirm(`Revoke the key “${key.name}”? Programs using it stop at once.`)) return;
    try { await api(`/v1/users/me/api-keys/${key.id}`, { method: "DELETE" }); say(`Key “${key.name}” revoked.`, true); listKeys(); }
    catch (e) { say(e.message); }
  };
  return node;
}

async function listKeys() {
  try {
    const keys = await api("/v1/users/me/api-keys");
    $("#keys").replaceChildren(...keys.map(keyRow));
  } catch (e) { say(e.message); }
}

async function show() {
  const signedIn = Boolean(store.access);
  $("#auth").hidden = signedIn;
  $("#studio").hidden = !signedIn;
  $("#logout").hidden = !signedIn;
  $("#who").hidden = !signedIn;
  $("#new-key").hidden = true;  // a key is shown once, never again after a reload or sign-out
  $("#new-key-value").value = "";
  if (!signedIn) { $("#keys").textContent = ""; return; }
  try {
    const me = await api("/v1/users/me");
    $("#who").textContent = me.username;
    const page = await api("/v1/jobs?limit=24");
    $("#jobs").textContent = "";
    page.items.reverse().forEach(follow);
    listKeys();
  } catch (e) { say(e.message); }
  try {
    const models = (await api("/v1/models")).models;
    const select = $("select[name=model]");
    select.textContent = "";
    for (const [name, info] of Object.entries(models)) {
      select.append(new Option(`${name} (${info.resolution}px)`, name));
      if (info.demo_weights) $("#demo").hidden = false;
    }
  } catch (e) { say(`models unavailable: ${e.message} (jobs still queue)`); }
}

$("#delete-account-form").onsubmit = async (event) => {
  event.preventDefault();
  const f = event.target;
  if (!confirm("Delete your account and every picture of yours? This cannot be undone.")) return;
  try {
    await api("/v1/users/me", { method: "DELETE", body: JSON.stringify({ password: f.password.value }),
                                headers: { "Content-Type": "application/json" } }, false);
    f.reset();
    store.clear(); streams.forEach((s) => s.close()); streams.clear(); show();
    say("Your account was deleted.", true);
  } catch (e) { say(e.message); }
};
$("#show-register").onclick = () => { $("#login-form").hidden = true; $("#register-form").hidden = false; };
$("#show-login").onclick = () => { $("#login-form").hidden = false; $("#register-form").hidden = true; };
$("#login-form").onsubmit = async (event) => {
  event.preventDefault();
  const f = event.target;
  try { await signIn(f.username.value, f.password.value); say(""); show(); } catch (e) { say(e.message); }
};
$("#register-form").onsubmit = async (event) => {
  event.preventDefault();
  const f = event.target;
  try {
    await api("/v1/users", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username: f.username.value, email: f.email.value, password: f.password.value }) });
    await signIn(f.username.value, f.password.value);
    say(""); show();
  } catch (e) { say(e.message); }
};
$("#logout").onclick = async () => {
  try { await api("/v1/auth/logout", { method: "POST" }); } catch (e) { /* already gone */ }
  store.clear(); streams.forEach((s) => s.close()); streams.clear(); show();
};
$("#sample-form").onsubmit = (event) => {
  event.preventDefault();
  const name = event.target.name.value.trim();
  showSample(name || String(Math.floor(Math.random() * 2 ** 31)));
};
$("#surprise").onclick = () => showSample(String(Math.floor(Math.random() * 2 ** 31)));
$("#use-sample-seed").onclick = () => {
  $("#generate-form").seed.value = $("#sample").dataset.seed;
  $("#generate-form").prompt.focus();
};
$("#copy-link").onclick = async () => {
  const link = $("#share-link");
  try { await navigator.clipboard.writeText(link.value); say("Share link copied.", true); }
  catch (e) { link.select(); say("Copy the selected link (the browser did not allow copying)."); }
};
$("#key-form").onsubmit = async (event) => {
  event.preventDefault();
  const f = event.target;
  const body = { name: f.name.value, scopes: f.read_only.checked ? ["jobs:read"] : ["jobs:read", "jobs:write"] };
  if (f.expires.value) body.expires_in_days = Number(f.expires.value);
  try {
    const created = await api("/v1/users/me/api-keys", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    $("#new-key-value").value = created.key;
    $("#new-key").hidden = false;
    f.name.value = "";
    say(`Key “${created.name}” created: copy it now.`, true);
    listKeys();
  } catch (e) { say(e.message); }
};
$("#copy-key").onclick = async () => {
  const field = $("#new-key-value");
  try { await navigator.clipboard.writeText(field.value); say("Key copied.", true); }
  catch (e) { field.select(); say("Copy the selected key (the browser did not allow copying)."); }
};
$("#close-viewer").onclick = () => $("#viewer").close();
$("input[name=psi]").oninput = (event) => { $("#psi-value").textContent = Number(event.target.value).toFixed(2); };
$("#generate-form").onsubmit = async (event) => {
  event.preventDefault();
  const f = event.target;
  const request = { prompt: f.prompt.value, steps: Number(f.steps.value), psi: Number(f.psi.value), model: f.model.value || "default" };
  if (f.negative_prompt.value) request.negative_prompt = f.negative_prompt.value;
  if (f.seed.value) request.seed = f.seed.value;
  if (Number(f.upscale.value) > 1) request.upscale = Number(f.upscale.value);
  try { await submit(JSON.stringify(request), f.image_prompt.files[0]); } catch (e) { say(e.message); }
};
show();
