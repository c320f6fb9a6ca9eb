// The REST API, seen from the browser: a bearer token kept in sessionStorage (gone with the tab,
// never in localStorage), errors in the API's {"error", "message", "details"} shape.

const TOKEN_KEY = "robopt.token";
const USER_KEY = "robopt.user";

// The API lives one level above /ui/ (the same app), also behind a reverse proxy's path prefix.
const API_ROOT = new URL("../", document.baseURI);

export function apiUrl(path) {
  return new URL(String(path).replace(/^\//, ""), API_ROOT).toString();
}

export const auth = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  get user() {
    try {
      return JSON.parse(sessionStorage.getItem(USER_KEY) || "null");
    } catch {
      return null;
    }
  },
  save(token, user) {
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(USER_KEY, JSON.stringify(user));
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(USER_KEY);
  },
  headers() {
    return this.token ? { Authorization: `Bearer ${this.token}` } : {};
  },
};

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = (body && body.error) || "http_error";
    this.details = body ? body.details : null;
  }

  /** The message and, when the API gave any, its details: what a person needs to act. */
  get text() {
    const d = this.details;
    if (d === null || d === undefined || d === "") return this.message;
    const extra = typeof d === "string" ? d : JSON.stringify(d);
    return `${this.message} (${extra})`;
  }
}

/** Called with the error when the server answers 401 to an authenticated call: the token is gone. */
let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = { error: "http_error", message: `HTTP ${response.status} ${response.statusText}`.trim() };
  }
  return new ApiError(response.status, body);
}

function networkError(err) {
  return new ApiError(0, {
    error: "network_error",
    message: "The server cannot be reached",
    details: String((err && err.message) || err),
  });
}

/** The token was refused: forget it and let the app ask for a new login. */
export function tokenRefused(err) {
  auth.clear();
  onUnauthorized(err);
}

function checkAuth(err, sentToken) {
  if (err.status === 401 && sentToken) tokenRefused(err);
  return err;
}

/** api("GET", "/models") -> parsed JSON; api("GET", path, {raw: true}) -> the Response. */
export async function api(method, path, { json, form, headers = {}, raw = false, signal } = {}) {
  const sentToken = auth.token;
  const all = { ...auth.headers(), ...headers };
  let body;
  if (json !== undefined) {
    all["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  let response;
  try {
    response = await fetch(apiUrl(path), { method, headers: all, body, signal, cache: "no-store" });
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw networkError(err);
  }
  if (!response.ok) throw checkAuth(await errorFrom(response), sentToken);
  if (raw) return response;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** A multipart upload with progress (fetch has no upload progress; XMLHttpRequest does). */
export function upload(path, formData, onProgress) {
  return new Promise((resolve, reject) => {
    const sentToken = auth.token;
    const xhr = new XMLHttpRequest();
    xhr.open("POST", apiUrl(path));
    if (sentToken) xhr.setRequestHeader("Authorization", `Bearer ${sentToken}`);
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) onProgress(e.loaded, e.total);
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = { error: "http_error", message: `HTTP ${xhr.status}` };
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(checkAuth(new ApiError(xhr.status, body), sentToken));
    });
    xhr.addEventListener("error", () => reject(networkError("the connection failed during the upload")));
    xhr.addEventListener("abort", () => reject(networkError("the upload was aborted")));
    xhr.send(formData);
  });
}

function filenameFrom(disposition, fallback) {
  if (!disposition) return fallback;
  const star = /filename\*\s*=\s*(?:UTF-8'')?([^;]+)/i.exec(disposition);
  if (star) {
    try {
      return decodeURIComponent(star[1].trim().replace(/^"|"$/g, ""));
    } catch {
      /* fall through to the plain form */
    }
  }
  const plain = /filename\s*=\s*"?([^";]+)"?/i.exec(disposition);
  return plain ? plain[1].trim() : fallback;
}

/** Download with the bearer header (a plain link cannot send it): fetch, then save the blob. */
export async function download(path, fallbackName = "model") {
  const response = await api("GET", path, { raw: true });
  const name = filenameFrom(response.headers.get("content-disposition"), fallbackName);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return { name, size: blob.size };
}
