// Comparison page: asks one question three ways (modes receiver, t2t, c2c) ONE AFTER ANOTHER, streams each
// answer into its column and shows its latencies.
//
// Why one after another: the server decodes one mode per batch, so three requests fired together would
// queue behind each other and the last one's first token would include the others' compute. Asked in
// turn, each path runs alone on the server; its times are measured here from sending its request, and the
// server's own stage times (including any queueing behind other clients) are shown beside them.
//
// The model card says how the fuser reads prompts: a chat fuser gets /v1/chat/completions, a plain-text
// fuser (or a pair without chat templates) gets /v1/completions with the question as plain text.
"use strict";

const MODES = ["receiver", "t2t", "c2c"];
const $ = (id) => document.getElementById(id);
let controller = null;  // AbortController of the request in flight
let card = null;        // the served model's card (GET /v1/models)

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
  setStatus(mode, "waiting for its turn...", "");
}

function useChat() {
  return !card || (card.endpoints || []).includes("/v1/chat/completions");
}

function showTimings(mode, t, clientFirst, clientTotal) {
  const parts = ["first token " + fmt(clientFirst), "total " + fmt(clientTotal)];
  if (t) {
    const stages = [];
    // Queueing is time spent behind other clients' requests (this page never queues its own paths).
    stages.push("queued " + fmt(t.queue || 0));
    if (t.sharer_note) stages.push("sharer note " + fmt(t.sharer_note));
    if (t.sharer_prefill) stages.push("sharer prefill " + fmt(t.sharer_prefill));
    if (t.fusion) stages.push("fusion " + fmt(t.fusion));
    if (t.receiver_prefill) stages.push("receiver prefill " + fmt(t.receiver_prefill));
    if (t.handover) stages.push("hand-over " + fmt(t.handover));
    if (t.decode) stages.push("decode " + fmt(t.decode));
    parts.push("server: " + stages.join(", "));
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

function requestFor(mode, prompt, opts) {
  const common = { mode, stream: true, max_tokens: opts.maxTokens, temperature: opts.temperature };
  if (useChat()) {
    return ["/v1/chat/completions", { ...common, messages: [{ role: "user", content: prompt }] }];
  }
  return ["/v1/completions", { ...common, prompt }];
}

// Returns false when the user stopped the run.
async function runMode(mode, prompt, opts) {
  const [url, body] = requestFor(mode, prompt, opts);
  setStatus(mode, "sending...", "");
  const t0 = performance.now();
  let first = null;
  let resp;
  try {
    resp = await fetch(url, { method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal });
  } catch (e) {
    setStatus(mode, controller.signal.aborted ? "stopped" : "network error: " + e, "error");
    return !controller.signal.aborted;
  }
  if (!resp.ok) {
    setStatus(mode, "error " + resp.status + ": " + (await errorText(resp)), "error");
    return true;
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
          const choice = chunk.choices && chunk.choices[0];
          const note = chunk.note !== undefined ? chunk.note : choice && choice.note;
          if (note !== undefined && note !== null && mode === "t2t") {
            $("note-t2t").textContent = note;
            $("note-t2t-box").hidden = false;
          }
          const text = choice && (choice.delta ? choice.delta.content : choice.text);
          if (text) {
            if (first === null) first = (performance.now() - t0) / 1000;
            $("answer-" + mode).textContent += text;
          }
          if (choice && choice.finish_reason) {
            const total = (performance.now() - t0) / 1000;
            showTimings(mode, chunk.timings || choice.timings, first, total);
            const n = chunk.usage ? chunk.usage.completion_tokens : "?";
            setStatus(mode, "done (" + choice.finish_reason + ", " + n + " tokens)", "done");
            if (!$("answer-" + mode).textContent) $("answer-" + mode).textContent = "(empty answer)";
          }
        }
      }
    }
  } catch (e) {
    setStatus(mode, controller.signal.aborted ? "stopped" : "stream error: " + e, "error");
    return !controller.signal.aborted;
  }
  return true;
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
  $("send").disabled = true;
  $("stop").disabled = false;
  controller = new AbortController();
  MODES.forEach(reset);
  for (const mode of MODES) {  // one after another: no path waits behind another
    if (card && card.modes && !card.modes.includes(mode)) {
      setStatus(mode, "not offered by this server (modes: " + card.modes.join(", ") + ")", "error");
      continue;
    }
    if (!(await runMode(mode, prompt, opts))) {
      for (const m of MODES) if ($("status-" + m).textContent.startsWith("waiting")) setStatus(m, "stopped", "error");
      break;
    }
  }
  controller = null;
  $("send").disabled = false;
  $("stop").disabled = true;
}

function stopAll() {
  if (controller) controller.abort();
}

async function loadModelInfo() {
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    if (!resp.ok) {
      $("model-info").textContent = resp.status === 401 ? "enter the API key to use this server" : "model info unavailable";
      return;
    }
    card = (await resp.json()).data[0];
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
    add("prompts", useChat() ? "chat (/v1/chat/completions)" : "plain text (/v1/completions)");
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
