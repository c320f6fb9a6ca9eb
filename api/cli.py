"""Start uvicorn with the settings: `python -m api`, and `robopt serve` (cli/app.py calls `serve`)."""

from __future__ import annotations

import argparse
import sys

from state.settings import get_settings


def serve(host: str | None, port: int | None, reload: bool | None) -> int:
    import uvicorn

    from api.log import configure_logging
    from api.security import InsecureConfigurationError, check_production_settings

    settings = get_settings()
    configure_logging(settings.api_log_level)
    try:
        check_production_settings(settings)
    except InsecureConfigurationError as exc:
        print(f"robopt: {exc}", file=sys.stderr)
        return 2
    use_reload = settings.api_reload if reload is None else reload
    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        reload=use_reload,
        log_level=settings.api_log_level,
        log_config=None,  # our logging: request id on every line
        access_log=False,  # replaced by the request middleware's line
        proxy_headers=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="robopt", description="robopt: robotics model optimization service")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="start the API server (settings from the environment / .env)")
    p_serve.add_argument("--host", help="default: API_HOST")
    p_serve.add_argument("--port", type=int, help="default: API_PORT")
    p_serve.add_argument(
        "--reload", action=argparse.BooleanOptionalAction, default=None, help="default: API_RELOAD"
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.host, args.port, args.reload)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
