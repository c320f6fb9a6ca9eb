// A session's server-sent events over fetch: EventSource cannot send an Authorization header.
// Each event's id is its seq in the server's log; a dropped connection reconnects with
// Last-Event-ID and gets exactly what it missed.

import { apiUrl, auth, errorFrom, tokenRefused } from "./api.js";

/** Yields {id, event, data} from a text/event-stream body (the WHATWG parsing rules). */
export async function* readEventStream(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  let type = "";
  let id = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (;;) {
      const m = /\r\n|\r|\n/.exec(buffer);
      if (!m) break;
      // A lone "\r" at the end may be the first half of "\r\n": wait for the next chunk.
      if (m[0] === "\r" && m.index === buffer.length - 1) break;
      const line = buffer.slice(0, m.index);
      buffer = buffer.slice(m.index + m[0].length);
      if (line === "") {
        if (data.length) yield { id, event: type || "message", data: data.join("\n") };
        data = [];
        type = "";
        continue;
      }
      if (line.startsWith(":")) continue; // keep-alive comment
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (name === "data") data.push(text);
      else if (name === "event") type = text;
      else if (name === "id") id = text;
    }
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Follow /sessions/{id}/events until the session's `end`. Calls onEvent(type, data, seq) once per
 * event, in order, and onState(state, error) with "connecting" | "live" | "reconnecting" | "ended"
 * | "failed". `resume()` opens the stream again after an end (a rollback adds events to a
 * finished session).
 */
export function followSession(sessionId, { onEvent, onState }) {
  let last = 0;
  let stopped = false;
  let running = false;
  let controller = null;

  async function loop() {
    running = true;
    let delay = 1000;
    try {
      while (!stopped) {
        controller = new AbortController();
        onState(last ? "reconnecting" : "connecting");
        let ended = false;
        try {
          const headers = { Accept: "text/event-stream", ...auth.headers() };
          if (last > 0) headers["Last-Event-ID"] = String(last);
          const response = await fetch(apiUrl(`/sessions/${encodeURIComponent(sessionId)}/events`), {
            headers,
            signal: controller.signal,
            cache: "no-store",
          });
          if (!response.ok) {
            const err = await errorFrom(response);
            if (response.status === 401) {
              tokenRefused(err);
              return;
            }
            if (response.status < 500) {
              onState("failed", err); // not found, refused: retrying would not help
              return;
            }
            throw err;
          }
          onState("live");
          delay = 1000;
          for await (const message of readEventStream(response.body)) {
            const seq = Number(message.id);
            if (Number.isFinite(seq) && seq > 0) {
              if (seq <= last) continue;
              last = seq;
            }
            let data;
            try {
              data = JSON.parse(message.data);
            } catch {
              data = { text: message.data };
            }
            onEvent(message.event, data, seq);
            if (message.event === "end") ended = true;
          }
        } catch (err) {
          if (stopped) return;
          onState("reconnecting", err);
        }
        if (ended) {
          onState("ended");
          return;
        }
        if (stopped) return;
        await sleep(delay);
        delay = Math.min(delay * 2, 15000);
      }
    } finally {
      running = false;
    }
  }

  loop();
  return {
    get lastId() {
      return last;
    },
    resume() {
      if (!running && !stopped) loop();
    },
    stop() {
      stopped = true;
      if (controller) controller.abort();
    },
  };
}
