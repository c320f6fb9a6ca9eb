"""The `robopt` client against a live server: login, models, optimize --follow, sessions, errors."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path

from tests.cli.conftest import ROBOPT, Robopt
from tests.cli.policies import SIGNATURE, flaky_policy, traced_policy
from tests.conftest import ADMIN_PASSWORD, ADMIN_USERNAME, LiveServer


def _login(robopt: Robopt) -> None:
    result = robopt("login", "--username", ADMIN_USERNAME, ROBOPT_PASSWORD=ADMIN_PASSWORD)
    assert result.exit_code == 0, result.output


def test_login_prompts_for_what_is_missing_and_keeps_the_token_private(robopt: Robopt) -> None:
    result = robopt("login", input=f"{ADMIN_USERNAME}\n{ADMIN_PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert "Username:" in result.output and "Password:" in result.output
    assert ADMIN_PASSWORD not in result.output  # the prompt hides it
    assert f"Logged in to {robopt.base_url} as admin (admin)" in result.output

    assert stat.S_IMODE(robopt.credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(robopt.credentials.parent.stat().st_mode) == 0o700
    saved = json.loads(robopt.credentials.read_text())
    assert saved["default_url"] == robopt.base_url
    assert saved["servers"][robopt.base_url]["username"] == "admin"

    # A second login rewrites the file: still 0600, even if someone loosened it meanwhile.
    robopt.credentials.chmod(0o644)
    _login(robopt)
    assert stat.S_IMODE(robopt.credentials.stat().st_mode) == 0o600

    # Without --base-url or ROBOPT_URL, the server of the last login is used.
    listed = robopt("models", "list", ROBOPT_URL=None)
    assert listed.exit_code == 0, listed.output

    out = robopt("logout")
    assert out.exit_code == 0 and "Logged out" in out.output
    assert robopt.base_url not in json.loads(robopt.credentials.read_text())["servers"]
    again = robopt("models", "list")
    assert again.exit_code == 1 and "Not logged in" in again.output and "robopt login" in again.output


def test_bad_credentials_are_refused_and_nothing_is_saved(robopt: Robopt) -> None:
    result = robopt("login", "-u", ADMIN_USERNAME, "--password", "not-the-password")
    assert result.exit_code == 1
    assert "Incorrect username or password" in result.output
    assert not robopt.credentials.exists()


def test_models_upload_list_show_download_delete(robopt: Robopt, tmp_path: Path) -> None:
    _login(robopt)
    path = traced_policy(tmp_path / "walker.pt")
    up = robopt("models", "upload", str(path), "--name", "walker [bold]policy[/bold]", "-q")
    assert up.exit_code == 0, up.output
    model_id = up.stdout.strip()
    assert len(model_id) == 32

    listed = robopt("models", "list", "--json")
    assert listed.exit_code == 0, listed.output
    items = {m["id"]: m for m in json.loads(listed.stdout)["items"]}
    assert items[model_id]["format"] == "torchscript"
    table = robopt("models", "list")
    assert "walker [bold]policy[/bold]" in table.output  # printed as typed, not as markup

    shown = robopt("models", "show", model_id)
    assert shown.exit_code == 0, shown.output
    assert "obs" in shown.output and "[dynamic, 32]" in shown.output and "283,656" in shown.output
    assert "output" in shown.output and "logits" in shown.output

    out_dir = tmp_path / "downloads"
    out_dir.mkdir()
    got = robopt("models", "download", model_id, "-o", str(out_dir))
    assert got.exit_code == 0, got.output
    downloaded = out_dir / "walker.pt"
    assert downloaded.read_bytes() == path.read_bytes()
    assert "runs with torch" in got.output  # the server's X-Model-Runtime
    no_onnx = robopt("models", "download", model_id, "--onnx", "-o", str(out_dir))
    assert no_onnx.exit_code == 1 and "no ONNX form" in no_onnx.output
    again = robopt("models", "download", model_id, "-o", str(out_dir))
    assert again.exit_code == 1 and "exists" in again.output and "--force" in again.output
    assert robopt("models", "download", model_id, "-o", str(out_dir), "--force").exit_code == 0

    refused = robopt("models", "delete", model_id, input="n\n")
    assert refused.exit_code == 1 and "Aborted" in refused.output
    assert model_id in robopt("models", "list", "--json").stdout
    deleted = robopt("models", "delete", model_id, "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert model_id not in robopt("models", "list", "--json").stdout
    gone = robopt("models", "delete", model_id, "--yes")
    assert gone.exit_code == 1 and "Model not found" in gone.output


def test_optimize_a_file_follows_to_completion_then_sessions_commands(robopt: Robopt, tmp_path: Path) -> None:
    _login(robopt)
    path = traced_policy(tmp_path / "policy.pt")
    run = robopt(
        "optimize",
        str(path),
        "--preset",
        "max_compression",
        "--max-trials",
        "3",
        "--benchmark-iterations",
        "10",
        "--follow",
    )
    assert run.exit_code == 0, run.output
    out = run.output
    assert "Uploaded policy" in out and "started (rules planner, preset max_compression)" in out
    # The agent's decisions, as they arrived, then the results table.
    for word in ("profile", "thought", "call", "measure", "accepted"):
        assert f"\n{word}" in out or out.startswith(word), (word, out)
    assert "Gains of the selected version" in out and "smaller" in out and "Trials" in out
    assert "completed" in out.splitlines()[-1]
    session_id = next(
        line.split()[1] for line in out.splitlines() if line.startswith("Session ") and "started" in line
    )

    listed = robopt("sessions", "list", "--json")
    assert session_id in [s["session_id"] for s in json.loads(listed.stdout)["items"]]
    status = robopt("sessions", "status", session_id, "--json")
    assert json.loads(status.stdout)["status"] == "completed"
    results = json.loads(robopt("sessions", "results", session_id, "--json").stdout)
    selected = results["selected_version"]
    assert selected["version"] != "v0" and selected["model_id"]
    assert "Recipe:" in robopt("sessions", "results", session_id).output

    got = robopt("sessions", "download", session_id, "-o", str(tmp_path))
    assert got.exit_code == 0, got.output
    saved = Path(got.output.split("Saved ", 1)[1].split(" (")[0])
    assert saved.is_file() and saved.stat().st_size > 0 and saved.parent == tmp_path

    back = robopt("sessions", "rollback", session_id)
    assert back.exit_code == 0 and "Rolled back to v0 (now)" in back.output, back.output
    again = robopt("sessions", "rollback", session_id, "--trial", "99")
    assert again.exit_code == 1 and "there is no trial 99" in again.output
    late = robopt("sessions", "cancel", session_id)
    assert late.exit_code == 1 and "already completed" in late.output
    said = robopt("sessions", "message", session_id, "stop")
    assert said.exit_code == 1 and "already completed" in said.output


def test_a_failing_session_exits_non_zero_with_its_error(robopt: Robopt, tmp_path: Path) -> None:
    _login(robopt)
    model = robopt(
        "models", "upload", str(flaky_policy(tmp_path / "flaky.pt")), "--input-signature", SIGNATURE, "-q"
    )
    assert model.exit_code == 0, model.output
    run = robopt("optimize", model.stdout.strip(), "--max-trials", "2", "--follow")
    assert run.exit_code == 1, run.output
    assert "sensor driver lost" in run.output
    assert re.search(r"Error: Session [0-9a-f]{32} failed: .*sensor driver lost", run.output, re.S), (
        run.output
    )


def test_errors_are_the_api_messages(robopt: Robopt, tmp_path: Path, server: LiveServer) -> None:
    _login(robopt)
    missing = robopt("optimize", "0" * 32, "--follow")
    assert missing.exit_code == 1 and "Error: Model not found" in missing.output
    bad_preset = robopt("optimize", "0" * 32, "--preset", "fastest")
    assert bad_preset.exit_code == 2 and "must be one of" in bad_preset.output
    # Out of the API's range: refused before anything is uploaded.
    too_many = robopt("optimize", str(traced_policy(tmp_path / "p.pt")), "--max-trials", "500")
    assert too_many.exit_code == 2 and "Uploaded" not in too_many.output
    no_file = robopt("optimize", str(tmp_path / "absent.onnx"))
    assert no_file.exit_code == 1 and "No such file" in no_file.output
    not_a_model = tmp_path / "notes.exe"
    not_a_model.write_bytes(b"MZ not a model")
    refused = robopt("models", "upload", str(not_a_model))
    assert refused.exit_code == 1 and "not accepted" in refused.output
    forged = robopt("models", "list", ROBOPT_TOKEN="not-a-token")
    assert forged.exit_code == 1 and "robopt login" in forged.output
    nowhere = robopt("--base-url", "http://127.0.0.1:9", "login", "-u", "admin", "-p", "x")
    assert nowhere.exit_code == 1 and "Cannot reach http://127.0.0.1:9" in nowhere.output


def test_the_console_script_runs_login_from_the_environment(robopt: Robopt, tmp_path: Path) -> None:
    # The installed `robopt` script (the server of these tests is `robopt serve` too).
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(robopt.config_home),
        "ROBOPT_URL": robopt.base_url,
        "ROBOPT_PASSWORD": ADMIN_PASSWORD,
    }
    done = subprocess.run(
        [str(ROBOPT), "login", "--username", ADMIN_USERNAME],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(robopt.credentials.stat().st_mode) == 0o600
    help_text = subprocess.run(
        [str(ROBOPT), "--help"], env=env, capture_output=True, text=True, timeout=60
    ).stdout
    for command in ("login", "models", "optimize", "sessions", "serve"):
        assert command in help_text


def test_cancel_a_running_session_then_follow_exits_non_zero(robopt: Robopt, tmp_path: Path) -> None:
    _login(robopt)
    path = traced_policy(tmp_path / "slow.pt", seed=3)
    started = robopt(
        "optimize",
        str(path),
        "--preset",
        "max_compression",
        "--max-trials",
        "8",
        "--benchmark-iterations",
        "10000",
    )
    assert started.exit_code == 0, started.output
    assert "robopt sessions follow" in started.output
    session_id = next(line.split()[1] for line in started.output.splitlines() if line.startswith("Session "))
    cancelled = robopt("sessions", "cancel", session_id)
    assert cancelled.exit_code == 0, cancelled.output
    followed = robopt("sessions", "follow", session_id)
    assert followed.exit_code == 1, followed.output
    assert f"Error: Session {session_id} cancelled" in followed.output
    status = json.loads(robopt("sessions", "status", session_id, "--json").stdout)
    assert status["status"] == "cancelled" and status["cancel_requested"] is True
