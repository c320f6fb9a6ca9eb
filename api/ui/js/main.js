// Hash routes -> views. Each view renders into <main> and returns a cleanup (closing streams).

import { api, auth, setUnauthorizedHandler } from "./api.js";
import { loginView } from "./views/login.js";
import { modelView } from "./views/model.js";
import { modelsView } from "./views/models.js";
import { sessionView } from "./views/session.js";
import { sessionsView } from "./views/sessions.js";

const ROUTES = [
  [/^#\/models\/([^/]+)$/, modelView],
  [/^#\/models$/, modelsView],
  [/^#\/sessions\/([^/]+)$/, sessionView],
  [/^#\/sessions$/, sessionsView],
];

const main = document.getElementById("app");
let cleanup = null;
let notice = "";

function showAccount() {
  const user = auth.user;
  const signedIn = Boolean(auth.token);
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("account").hidden = !signedIn;
  document.getElementById("whoami").textContent = user ? `${user.username} (${user.role})` : "";
  for (const a of document.querySelectorAll("#nav a")) {
    const current = location.hash.startsWith(a.getAttribute("href"));
    if (current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

export function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function route() {
  if (cleanup) cleanup();
  cleanup = null;
  main.replaceChildren();
  if (!auth.token) {
    const next = location.hash && location.hash !== "#/login" ? location.hash : "#/models";
    cleanup = loginView(main, { next, notice, navigate });
    notice = "";
    showAccount();
    return;
  }
  const hash = location.hash || "#/models";
  for (const [pattern, view] of ROUTES) {
    const m = pattern.exec(hash);
    if (m) {
      cleanup = view(main, { params: m.slice(1).map(decodeURIComponent), navigate }) || null;
      showAccount();
      return;
    }
  }
  navigate("#/models");
}

setUnauthorizedHandler(() => {
  notice = "Your session has expired or was revoked: log in again.";
  route();
});

document.getElementById("logout").addEventListener("click", async () => {
  try {
    await api("POST", "/auth/logout");
  } catch {
    /* the token is dropped here whatever the server says */
  }
  auth.clear();
  notice = "Logged out.";
  location.hash = "#/login";
  route();
});

window.addEventListener("hashchange", route);
route();
