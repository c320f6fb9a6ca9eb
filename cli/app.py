"""`robopt`: log in, manage models, run and follow optimizations, fetch results, from a terminal.

Exit status: 0 on success; 1 when the API refuses (its message is printed), the server cannot be
reached, or a followed session ends other than `completed`; 2 for a usage error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from cli import config, render
from cli.client import ApiClientError, Client

TERMINAL = ("completed", "failed", "cancelled")
PRESETS = ("balanced_optimization", "max_compression", "max_speed", "accuracy_first")
TECHNIQUES = ("quantization", "pruning", "half_precision", "compilation")  # agents.criteria.TECHNIQUES

app = typer.Typer(
    name="robopt",
    help="robopt: make robotics models small and fast enough to deploy (client of the REST API).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
models_app = typer.Typer(help="Upload, list, inspect, download and delete models.", no_args_is_help=True)
sessions_app = typer.Typer(help="Follow, steer and collect optimization sessions.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(sessions_app, name="sessions")


class State:
    base_url: str = config.DEFAULT_URL


state = State()


def _width(stream: object) -> int | None:
    # Rich assumes 80 columns off a terminal (CI logs, pipes); tables of full ids need more.
    isatty = getattr(stream, "isatty", None)
    return None if (isatty and isatty()) or "COLUMNS" in os.environ else 120


def out() -> Console:
    return Console(highlight=False, width=_width(sys.stdout))


def err() -> Console:
    return Console(stderr=True, highlight=False, width=_width(sys.stderr))


def fail(message: str, hint: str | None = None) -> typer.Exit:
    console = err()
    console.print(Text.assemble(("Error: ", "bold red"), message))
    if hint:
        console.print(Text(hint, style="dim"))
    return typer.Exit(1)


@contextmanager
def api(authenticated: bool = True) -> Iterator[Client]:
    """A client for the chosen server, with its saved token; API errors end the command (exit 1)."""
    token = os.environ.get("ROBOPT_TOKEN") or None
    if authenticated and token is None:
        saved = config.saved_login(state.base_url)
        if saved is None:
            raise fail(f"Not logged in to {state.base_url}", "run: robopt login")
        token = saved.token
    client = Client(state.base_url, token)
    try:
        yield client
    except ApiClientError as exc:
        hint = "run: robopt login" if exc.status == 401 and authenticated else None
        raise fail(str(exc), hint) from None
    finally:
        client.close()


@app.callback()
def main_options(
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url",
            envvar="ROBOPT_URL",
            help="Server URL (default: the server of the last login, else http://localhost:8000).",
        ),
    ] = None,
) -> None:
    state.base_url = config.resolve_url(base_url)


# ---------------------------------------------------------------------------------------------
# auth


@app.command()
def login(
    username: Annotated[
        str | None, typer.Option("--username", "-u", help="Prompted for when missing.")
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(
            "--password",
            "-p",
            envvar="ROBOPT_PASSWORD",
            help="Prompted for (hidden) when missing; ROBOPT_PASSWORD for scripts.",
            show_envvar=True,
        ),
    ] = None,
) -> None:
    """Log in and keep the token (per server) in the user's config directory, mode 0600."""
    username = username or typer.prompt("Username")
    password = password or typer.prompt("Password", hide_input=True)
    with api(authenticated=False) as client:
        token = client.login(username, password)
        me = client.me()
    path = config.remember(
        state.base_url, token["access_token"], me["username"], me["role"], token.get("expires_in")
    )
    minutes = int(token.get("expires_in", 0)) // 60
    out().print(
        Text(
            f"Logged in to {state.base_url} as {me['username']} ({me['role']}); "
            f"token valid {minutes} min, saved in {path}"
        )
    )


@app.command()
def logout() -> None:
    """Revoke the token on the server and forget it here."""
    saved = config.saved_login(state.base_url)
    if saved is None:
        out().print(Text(f"Not logged in to {state.base_url}"))
        return
    client = Client(state.base_url, saved.token)
    try:
        client.logout()
    except ApiClientError as exc:
        if exc.status != 401:  # an expired token is as good as revoked
            raise fail(str(exc)) from None
    finally:
        client.close()
    config.forget(state.base_url)
    out().print(Text(f"Logged out of {state.base_url}"))


# ---------------------------------------------------------------------------------------------
# models


def _transfer_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
    )


def _upload(
    client: Client,
    path: Path,
    name: str | None,
    description: str | None,
    architecture: str | None,
    input_signature: str | None,
) -> dict[str, Any]:
    fields = {
        k: v
        for k, v in {
            "name": name,
            "description": description,
            "architecture": architecture,
            "input_signature": input_signature,
        }.items()
        if v
    }
    console = err()
    with _transfer_progress(console) as progress:
        task = progress.add_task(f"Uploading {path.name}", total=path.stat().st_size)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)
            if done >= total:
                progress.update(task, description="Checking on the server")

        return client.upload_model(path, fields, update)


@models_app.command("list")
def models_list(
    limit: Annotated[int, typer.Option(min=1, max=100)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON.")] = False,
) -> None:
    """Your models (all of them for administrators), newest first."""
    with api() as client:
        page = client.request("GET", "/models", params={"limit": limit, "offset": offset})
    if as_json:
        render.print_json(out(), page)
    else:
        out().print(render.models_table(page["items"], page["total"]))


@models_app.command("show")
def models_show(
    model_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON.")] = False,
) -> None:
    """A model's profile and input signature."""
    with api() as client:
        model = client.request("GET", f"/models/{model_id}")
    if as_json:
        render.print_json(out(), model)
    else:
        out().print(render.model_details(model))


@models_app.command("upload")
def models_upload(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="The model file.")],
    name: Annotated[str | None, typer.Option(help="Defaults to the file name.")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    architecture: Annotated[
        str | None, typer.Option(help='For a state dict: JSON like {"name": "mlp_policy", "config": {}}.')
    ] = None,
    input_signature: Annotated[
        str | None, typer.Option(help='JSON like [{"name": "obs", "shape": [null, 64], "dtype": "float32"}].')
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the new model's id.")] = False,
) -> None:
    """Upload a model file (checked by the server before it is stored)."""
    with api() as client:
        model = _upload(client, file, name, description, architecture, input_signature)
    if quiet:
        out().print(Text(model["model_id"]))
        return
    out().print(
        Text(
            f"Uploaded {model['name']}: {model['model_id']} ({model['format']}, "
            f"{render.fmt_bytes(model['size_bytes'])})"
        )
    )


@models_app.command("download")
def models_download(
    model_id: str,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File or directory (default: the server's name, here)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
    as_onnx: Annotated[
        bool, typer.Option("--onnx", help="The ONNX form saved beside an optimized transformers directory.")
    ] = False,
) -> None:
    """Download a model file (its SHA-256 checked against the server's)."""
    with api() as client:
        target, runtime = _download(
            client, f"/models/{model_id}/download", output, force, {"format": "onnx"} if as_onnx else None
        )
    out().print(Text(f"Saved {target}" + (f" (runs with {runtime})" if runtime else "")))


def _download(
    client: Client, path: str, output: Path | None, force: bool, params: dict[str, str] | None = None
) -> tuple[Path, str | None]:
    with _transfer_progress(err()) as progress:
        task = progress.add_task("Downloading", total=None)
        return client.download(
            path,
            output,
            force,
            lambda done, total: progress.update(task, completed=done, total=total or None),
            params,
        )


@models_app.command("delete")
def models_delete(
    model_id: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a model (its file and record)."""
    with api() as client:
        if not yes:
            model = client.request("GET", f"/models/{model_id}")
            typer.confirm(f"Delete model {model['name']!r} ({model_id})?", abort=True)
        client.request("DELETE", f"/models/{model_id}")
    out().print(Text(f"Deleted {model_id}"))


# ---------------------------------------------------------------------------------------------
# optimize and sessions


def _criteria(
    preset: str | None,
    goal: str | None,
    techniques: list[str] | None,
    accuracy_floor: float | None,
    size_target: float | None,
    latency_target: float | None,
    max_trials: int | None,
    time_budget: float | None,
    benchmark_iterations: int | None,
) -> dict[str, Any]:
    # Only what was given: the preset and the goal interpreter fill the rest on the server.
    values = {
        "criteria_name": preset,
        "goal": goal,
        "optimization_techniques": techniques or None,
        "target_accuracy_threshold": accuracy_floor,
        "max_size_reduction_percent": size_target,
        "target_latency_ms": latency_target,
        "max_trials": max_trials,
        "time_budget_s": time_budget,
        "benchmark_iterations": benchmark_iterations,
    }
    return {k: v for k, v in values.items() if v is not None}


def _follow(client: Client, session_id: str) -> str:
    """Print the agent's decisions above a live progress bar until the session ends; its status."""
    console = out()
    status = "queued"
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("queued", total=100)
        for _seq, kind, data in client.events(session_id):
            if kind == "progress":
                progress.update(
                    task, completed=data.get("percentage", 0), description=str(data.get("step", ""))
                )
            elif kind in ("status", "end") and data.get("status"):
                status = data["status"]
                if status in TERMINAL:
                    progress.update(
                        task, completed=100 if status == "completed" else None, description=status
                    )
            line = render.event_line(kind, data)
            if line is not None:
                progress.console.print(line)
    return status


def _finish(client: Client, session_id: str, status: str) -> None:
    console = out()
    try:
        results = client.request("GET", f"/sessions/{session_id}/results")
    except ApiClientError as exc:
        if exc.status != 409:
            raise
        results = None
    if results is not None:
        console.print(render.results_view(results))
    if status != "completed":
        detail = client.request("GET", f"/sessions/{session_id}/status")
        reason = f": {detail['error']}" if detail.get("error") else ""
        raise fail(f"Session {session_id} {status}{reason}")
    console.print(Text(f"Session {session_id} completed", style="green"))


@app.command()
def optimize(
    target: Annotated[
        str, typer.Argument(metavar="FILE_OR_MODEL_ID", help="A model file (uploaded first) or a model id.")
    ],
    preset: Annotated[
        str | None, typer.Option(help=f"One of {', '.join(PRESETS)} (default: from the goal, else balanced).")
    ] = None,
    goal: Annotated[str | None, typer.Option(help="The goal in plain words.")] = None,
    technique: Annotated[
        list[str] | None, typer.Option(help=f"Allowed technique (repeat): {', '.join(TECHNIQUES)}.")
    ] = None,
    accuracy_floor: Annotated[
        float | None, typer.Option(min=0.001, max=1.0, help="Accuracy retained floor, 0-1.")
    ] = None,
    size_target: Annotated[
        float | None,
        typer.Option(min=0.1, max=99.9, help="Size reduction target, %."),
    ] = None,
    latency_target: Annotated[
        float | None, typer.Option(min=0.0001, help="Latency target, ms (p50, batch 1).")
    ] = None,
    max_trials: Annotated[
        int | None, typer.Option(min=1, max=200, help="At most this many candidates.")
    ] = None,
    time_budget: Annotated[
        float | None, typer.Option(min=1.0, max=86400.0, help="Wall-clock budget, seconds.")
    ] = None,
    benchmark_iterations: Annotated[
        int | None, typer.Option(min=1, max=10000, help="Timed iterations per benchmark.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Name of the uploaded model (a file only).")] = None,
    architecture: Annotated[
        str | None, typer.Option(help="Architecture JSON of an uploaded state dict.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Follow the session until it ends.")
    ] = False,
) -> None:
    """Start an optimization; with --follow, watch it and print the results (exit 1 unless it completes)."""
    if preset is not None and preset not in PRESETS:
        raise typer.BadParameter(f"must be one of {', '.join(PRESETS)}", param_hint="--preset")
    for name_ in technique or []:
        if name_ not in TECHNIQUES:
            raise typer.BadParameter(f"must be one of {', '.join(TECHNIQUES)}", param_hint="--technique")
    body = _criteria(
        preset,
        goal,
        technique,
        accuracy_floor,
        size_target,
        latency_target,
        max_trials,
        time_budget,
        benchmark_iterations,
    )
    path = Path(target)
    with api() as client:
        if path.is_file():
            model = _upload(client, path, name, None, architecture, None)
            model_id = model["model_id"]
            out().print(Text(f"Uploaded {model['name']}: {model_id} ({model['format']})"))
        elif os.sep in target or path.suffix:
            raise fail(f"No such file: {target}")
        else:
            model_id = target
        started = client.request("POST", "/optimize", json={"model_id": model_id, **body})
        session_id = started["session_id"]
        out().print(
            Text(
                f"Session {session_id} started ({started['planner']} planner"
                + (
                    ", goal interpreted by the agent)"
                    if goal
                    else f", preset {started['criteria'].get('criteria_name')})"
                )
            )
        )
        if not follow:
            out().print(Text(f"Follow it with: robopt sessions follow {session_id}", style="dim"))
            return
        status = _follow(client, session_id)
        _finish(client, session_id, status)


@sessions_app.command("list")
def sessions_list(
    status: Annotated[str | None, typer.Option(help="Only sessions with this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON.")] = False,
) -> None:
    """Your sessions, newest first."""
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if status:
        params["status"] = status
    with api() as client:
        page = client.request("GET", "/sessions", params=params)
    if as_json:
        render.print_json(out(), page)
    else:
        out().print(render.sessions_table(page["items"], page["total"]))


@sessions_app.command("status")
def sessions_status(
    session_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON.")] = False,
) -> None:
    """Status, progress and the best version so far."""
    with api() as client:
        body = client.request("GET", f"/sessions/{session_id}/status")
    if as_json:
        render.print_json(out(), body)
    else:
        out().print(render.status_details(body))


@sessions_app.command("follow")
def sessions_follow(session_id: str) -> None:
    """Follow a session's events until it ends, then print its results (exit 1 unless it completes)."""
    with api() as client:
        status = _follow(client, session_id)
        _finish(client, session_id, status)


@sessions_app.command("cancel")
def sessions_cancel(session_id: str) -> None:
    """Cancel a session (it stops at its next safe point, keeping partial results)."""
    with api() as client:
        body = client.request("POST", f"/sessions/{session_id}/cancel")
    out().print(Text(f"{body['status']}: {body['message']}"))


@sessions_app.command("rollback")
def sessions_rollback(
    session_id: str,
    trial: Annotated[int | None, typer.Option(help="Select this trial's candidate.")] = None,
    version: Annotated[str | None, typer.Option(help="Select this version (e.g. v0, v3).")] = None,
) -> None:
    """Go back to the previous accepted version, or to a trial's candidate or a version."""
    wanted = {k: v for k, v in {"trial": trial, "version": version}.items() if v is not None}
    with api() as client:
        body = client.request("POST", f"/sessions/{session_id}/rollback", json=wanted or None)
    when = "now" if body["applied"] else "at the agent's next step"
    out().print(Text(f"Rolled back to {body['target_version']} ({when})"))


@sessions_app.command("message")
def sessions_message(session_id: str, text: str) -> None:
    """Tell the agent something (taken into account at its next step)."""
    with api() as client:
        client.request("POST", f"/sessions/{session_id}/messages", json={"content": text})
    out().print(Text("Sent; the agent answers in the session's events."))


@sessions_app.command("results")
def sessions_results(
    session_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON.")] = False,
) -> None:
    """Gains, trials and recipe (partial ones while the session runs)."""
    with api() as client:
        body = client.request("GET", f"/sessions/{session_id}/results")
    if as_json:
        render.print_json(out(), body)
    else:
        out().print(render.results_view(body))


@sessions_app.command("download")
def sessions_download(
    session_id: str,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File or directory (default: the server's name, here)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Download the session's selected (optimized) model."""
    with api() as client:
        results = client.request("GET", f"/sessions/{session_id}/results")
        selected = results.get("selected_version") or {}
        path = selected.get("download_url") or (
            f"/models/{selected['model_id']}/download" if selected.get("model_id") else None
        )
        if not path:
            raise fail("This session has no downloadable version", selected.get("note"))
        target, runtime = _download(client, path, output, force)
    runs = f", runs with {runtime}" if runtime else ""
    out().print(Text(f"Saved {target} ({selected.get('version')}, {selected.get('artifact_format')}{runs})"))


# ---------------------------------------------------------------------------------------------
# server


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Default: API_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Default: API_PORT.")] = None,
    reload: Annotated[bool | None, typer.Option("--reload/--no-reload", help="Default: API_RELOAD.")] = None,
) -> None:
    """Start the API server (settings from the environment / .env)."""
    from api.cli import serve as run_server  # the server's own dependencies, only for this command

    raise typer.Exit(run_server(host, port, reload))


def main() -> None:
    app()
