"""The API's routers, in the order they appear in the documentation.

The sessions router (issue 4) is included when `api/routers/sessions.py` exists; it must expose
`router` (an APIRouter; its routes set their own paths, e.g. POST /optimize and /sessions/...).
"""

from __future__ import annotations

import importlib
import importlib.util

from fastapi import APIRouter

from api.routers import auth, models, monitoring, uploads, users

# Optional routers: included when their module exists. find_spec (rather than catching ImportError)
# so that a real import error inside such a module still fails loudly.
OPTIONAL_ROUTER_MODULES = ("api.routers.sessions",)


def all_routers() -> list[APIRouter]:
    routers = [monitoring.router, auth.router, users.router, models.router, uploads.router]
    for name in OPTIONAL_ROUTER_MODULES:
        if importlib.util.find_spec(name) is not None:
            module = importlib.import_module(name)
            routers.append(module.router)
            hot = getattr(module, "hot_router", None)
            if hot is not None:  # hot paths first: routes are matched in order
                routers.insert(0, hot)
    return routers
