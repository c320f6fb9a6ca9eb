import { ApiError, api, auth } from "../api.js";
import { field, h, messageBox } from "../dom.js";

export function loginView(root, { next, notice, navigate }) {
  const username = h("input", { name: "username", autocomplete: "username", required: true });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const submit = h("button", { type: "submit" }, "Log in");
  const error = messageBox("error");
  const info = messageBox("info");
  if (notice) info.show(notice);

  const form = h(
    "form",
    { class: "card login", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title" }, "Log in to robopt"),
    info.el,
    field("Username", username),
    field("Password", password),
    error.el,
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hide();
    submit.disabled = true;
    try {
      const token = await api("POST", "/auth/login", {
        json: { username: username.value.trim(), password: password.value },
      });
      auth.save(token.access_token, null);
      const me = await api("GET", "/auth/me");
      auth.save(token.access_token, { id: me.id, username: me.username, role: me.role });
      navigate(next === "#/login" ? "#/models" : next);
    } catch (err) {
      auth.clear();
      error.show(err instanceof ApiError ? err.text : String(err));
      password.select();
    } finally {
      submit.disabled = false;
    }
  });
  root.append(form);
  username.focus();
  return null;
}
