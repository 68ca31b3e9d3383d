// itmatch search page: sentence or photo -> a grid of indexed photos with their scores.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const results = $("results"), message = $("message"), sentences = $("sentences"), queryPhoto = $("query-photo");
  let limits = { max_k: 100, max_query_chars: 500, max_upload_bytes: 10485760 };

  function say(text, isError) {
    message.textContent = text;
    message.className = isError ? "error" : "";
  }

  async function getJSON(response) {
    let body = null;
    try { body = await response.json(); } catch (e) { /* not JSON */ }
    if (!response.ok) {
      const detail = body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : response.statusText;
      throw new Error(`${response.status}: ${detail}`);
    }
    return body;
  }

  function card(hit) {
    const fig = document.createElement("figure");
    fig.className = "hit";
    const link = document.createElement("a");
    link.href = hit.url;
    link.target = "_blank";
    link.rel = "noopener";
    const img = document.createElement("img");
    img.src = hit.thumb_url;
    img.alt = hit.path;
    img.title = hit.path;
    img.loading = "lazy";
    link.appendChild(img);
    const cap = document.createElement("figcaption");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = hit.path;
    const more = document.createElement("button");
    more.type = "button";
    more.textContent = "similar";
    more.title = "photos like this one";
    more.addEventListener("click", () => similar(hit));
    cap.append(score, name, more);
    fig.append(link, cap);
    return fig;
  }

  function show(data, what) {
    results.replaceChildren(...data.photos.map(card));
    say(`${data.photos.length} photos for ${what} (${data.took_ms} ms)`);
  }

  function clearExtras() {
    sentences.hidden = true;
    queryPhoto.hidden = true;
    queryPhoto.replaceChildren();
  }

  async function searchText(event) {
    if (event) event.preventDefault();
    const q = $("query").value.trim();
    if (!q) { say("type a sentence first", true); return; }
    if (q.length > limits.max_query_chars) { say(`the query is limited to ${limits.max_query_chars} characters`, true); return; }
    say("searching…");
    try {
      const k = $("k").value;
      const data = await getJSON(await fetch(`/api/search/text?q=${encodeURIComponent(q)}&k=${k}`));
      clearExtras();
      show(data, `“${data.query}”`);
    } catch (err) { say(err.message, true); }
  }

  async function searchImage(file) {
    if (!file) return;
    if (file.size > limits.max_upload_bytes) { say(`that file is ${(file.size / 1048576).toFixed(1)} MiB; the limit is ${(limits.max_upload_bytes / 1048576).toFixed(1)} MiB`, true); return; }
    say(`searching with ${file.name}…`);
    const form = new FormData();
    form.append("file", file);
    form.append("k", $("k").value);
    try {
      const data = await getJSON(await fetch("/api/search/image", { method: "POST", body: form }));
      clearExtras();
      const preview = document.createElement("img");
      preview.src = URL.createObjectURL(file);
      preview.alt = file.name;
      const label = document.createElement("span");
      label.textContent = `query photo: ${file.name}`;
      queryPhoto.append(preview, label);
      queryPhoto.hidden = false;
      const list = sentences.querySelector("ol");
      list.replaceChildren(...data.sentences.map((s) => {
        const li = document.createElement("li");
        const sc = document.createElement("span");
        sc.className = "score";
        sc.textContent = s.score.toFixed(3);
        li.append(sc, document.createTextNode(s.text));
        return li;
      }));
      sentences.hidden = data.sentences.length === 0;
      show(data, file.name);
    } catch (err) { say(err.message, true); }
  }

  async function similar(hit) {
    say(`photos like ${hit.path}…`);
    try {
      const data = await getJSON(await fetch(`/api/photos/${hit.id}/similar?k=${$("k").value}`));
      clearExtras();
      const preview = document.createElement("img");
      preview.src = hit.thumb_url;
      preview.alt = hit.path;
      const label = document.createElement("span");
      label.textContent = `photos like ${hit.path}`;
      queryPhoto.append(preview, label);
      queryPhoto.hidden = false;
      show(data, hit.path);
    } catch (err) { say(err.message, true); }
  }

  $("text-form").addEventListener("submit", searchText);
  $("file").addEventListener("change", (e) => searchImage(e.target.files[0]));
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => searchImage(e.dataTransfer.files[0]));
  // A photo dropped anywhere on the page searches too, instead of the browser opening it.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => { e.preventDefault(); if (e.target !== drop) searchImage(e.dataTransfer.files[0]); });

  fetch("/api/health").then(getJSON).then((h) => {
    limits = h.limits;
    const what = h.sentences ? `${h.photos} photos, ${h.sentences} sentences` : `${h.photos} photos`;
    $("status").textContent = `${what} · model ${h.model.recipe || ""} ${String(h.model.checkpoint_sha256).slice(0, 12)} · ${h.search.method} search`;
    document.body.dataset.ready = "1";
  }).catch((err) => say(`the service is not answering: ${err.message}`, true));
})();
