// Comparison page: sends one prompt to /v1/chat/completions three times (modes receiver, t2t, c2c),
// streams the server-sent events of each into its column and shows the latencies.
"use strict";

const MODES = ["receiver", "t2t", "c2c"];
const $ = (id) => document.getElementById(id);
let running = [];  // AbortControllers of the requests in flight

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function fmt(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  return seconds < 1 ? (seconds * 1000).toFixed(0) + " ms" : seconds.toFixed(2) + " s";
}

function setStatus(mode, text, cls) {
  const el = $("status-" + mode);
  el.textContent = text;
  el.className = "status" + (cls ? " " + cls : "");
}

function reset(mode) {
  $("answer-" + mode).textContent = "";
  $("latency-" + mode).textContent = "";
  if (mode === "t2t") { $("note-t2t").textContent = ""; $("note-t2t-box").hidden = true; }
  setStatus(mode, "waiting...", "");
}

function showTimings(mode, t, clientFirst, clientTotal) {
  const parts = ["first token " + fmt(clientFirst), "total " + fmt(clientTotal)];
  if (t) {
    const stages = [];
    if (t.queue) stages.push("queue " + fmt(t.queue));
    if (t.sharer_note) stages.push("sharer note " + fmt(t.sharer_note));
    if (t.sharer_prefill) stages.push("sharer prefill " + fmt(t.sharer_prefill));
    if (t.fusion) stages.push("fusion " + fmt(t.fusion));
    if (t.receiver_prefill) stages.push("receiver prefill " + fmt(t.receiver_prefill));
    if (t.handover) stages.push("hand-over " + fmt(t.handover));
    if (t.decode) stages.push("decode " + fmt(t.decode));
    if (stages.length) parts.push("server: " + stages.join(", "));
  }
  $("latency-" + mode).textContent = parts.join(" | ");
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return (body.error && body.error.message) || resp.statusText;
  } catch (e) {
    return resp.statusText;
  }
}

async function runMode(mode, messages, opts, controller) {
  reset(mode);
  const t0 = performance.now();
  let first = null;
  let resp;
  try {
    resp = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ messages, mode, stream: true, max_tokens: opts.maxTokens, temperature: opts.temperature }),
      signal: controller.signal,
    });
  } catch (e) {
    setStatus(mode, controller.signal.aborted ? "stopped" : "network error: " + e, "error");
    return;
  }
  if (!resp.ok) {
    setStatus(mode, "error " + resp.status + ": " + (await errorText(resp)), "error");
    return;
  }
  setStatus(mode, "generating...", "");
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) { setStatus(mode, "error: " + chunk.error.message, "error"); continue; }
          if (chunk.note !== undefined && mode === "t2t") {
            $("note-t2t").textContent = chunk.note;
            $("note-t2t-box").hidden = false;
          }
          const choice = chunk.choices && chunk.choices[0];
          if (choice && choice.delta && choice.delta.content) {
            if (first === null) first = (performance.now() - t0) / 1000;
            $("answer-" + mode).textContent += choice.delta.content;
          }
          if (choice && choice.finish_reason) {
            const total = (performance.now() - t0) / 1000;
            showTimings(mode, chunk.timings, first, total);
            const n = chunk.usage ? chunk.usage.completion_tokens : "?";
            setStatus(mode, "done (" + choice.finish_reason + ", " + n + " tokens)", "done");
            if (!$("answer-" + mode).textContent) $("answer-" + mode).textContent = "(empty answer)";
          }
        }
      }
    }
  } catch (e) {
    setStatus(mode, controller.signal.aborted ? "stopped" : "stream error: " + e, "error");
  }
}

async function ask(event) {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  stopAll();
  localStorage.setItem("c2c-api-key", $("api-key").value);
  const opts = {
    maxTokens: parseInt($("max-tokens").value, 10) || 64,
    temperature: parseFloat($("temperature").value) || 0,
  };
  const messages = [{ role: "user", content: prompt }];
  $("send").disabled = true;
  $("stop").disabled = false;
  running = MODES.map(() => new AbortController());
  await Promise.all(MODES.map((m, i) => runMode(m, messages, opts, running[i])));
  running = [];
  $("send").disabled = false;
  $("stop").disabled = true;
}

function stopAll() {
  for (const c of running) c.abort();
}

async function loadModelInfo() {
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    if (!resp.ok) {
      $("model-info").textContent = resp.status === 401 ? "enter the API key to use this server" : "model info unavailable";
      return;
    }
    const card = (await resp.json()).data[0];
    const info = $("model-info");
    info.textContent = "";
    const add = (label, value) => {
      info.append(label + " ");
      const c = document.createElement("code");
      c.textContent = value;
      info.append(c, " ");
    };
    add("model", card.id);
    add("receiver", card.receiver);
    add("sharer", card.sharers.join(", "));
  } catch (e) {
    $("model-info").textContent = "model info unavailable";
  }
}

$("api-key").value = localStorage.getItem("c2c-api-key") || "";
$("ask").addEventListener("submit", ask);
$("stop").addEventListener("click", stopAll);
$("api-key").addEventListener("change", loadModelInfo);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("ask").requestSubmit();
});
loadModelInfo();
