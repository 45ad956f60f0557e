"""Handler reload: re-import the modules apps come from and swap them into a running server.

Apps are named on the command line as ``module:attr`` (an App, or a function returning
one). A reload re-imports every module that holds one of their handlers, then the app
modules themselves, and hands the new apps to `Server.reload_apps`, which ends the old
code's timers before the new code's hooks run (never two generations of timers) and
hands each app's `state` over; connections stay open. Generated ``_pb2`` modules are
never re-imported (protobuf refuses to define a message twice), so a reload changes
behaviour, not the schema; a schema change needs a restart.

An app declared ``App(reloadable=False)`` refuses the reload before anything is
re-imported. If anything else fails (a syntax error, an import error, a duplicate
handler, timers no `@app.on_reload` would make again), the server keeps its old handlers
and timers, and the error is logged (with its traceback when it is one).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

from server.app import App
from server.server import Server
from server.timers import ReloadRefused

log = logging.getLogger("tickwire.reload")


def _ensure_cwd_importable() -> None:
    # Like uvicorn's --app-dir default: modules in the working directory are importable
    # even though a console script's sys.path does not include it.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def app_module(spec: str) -> ModuleType:
    """The module a ``MODULE:ATTR`` spec names, imported as `tickwire serve` imports it
    (modules in the working directory included)."""
    _ensure_cwd_importable()
    return importlib.import_module(spec.partition(":")[0])


def _app_from(module: ModuleType, attr: str, spec: str) -> App:
    app = getattr(module, attr or "app")
    if callable(app) and not isinstance(app, App):
        app = app()
    if not isinstance(app, App):
        raise TypeError(f"{spec} is not a tickwire App")
    return app


def _reloadable(module: ModuleType | None) -> bool:
    """Project code only: not generated protobuf code, not installed libraries."""
    if module is None or module.__name__.endswith("_pb2"):
        return False
    file = getattr(module, "__file__", None)
    return bool(file) and "site-packages" not in str(file) and str(file).endswith(".py")


class AppLoader:
    def __init__(self, specs: list[str]) -> None:
        self.specs = specs
        self.apps: list[App] = []

    def load(self) -> list[App]:
        apps = []
        for spec in self.specs:
            apps.append(_app_from(app_module(spec), spec.partition(":")[2], spec))
        self.apps = apps
        return apps

    def modules(self) -> list[ModuleType]:
        """Handler modules first, then the app modules that import them."""
        app_modules = [sys.modules[spec.partition(":")[0]] for spec in self.specs]
        handler_modules: list[ModuleType] = []
        for app in self.apps:
            for route in app.routes.values():
                module = sys.modules.get(route.handler.__module__)
                if module is not None and module not in handler_modules + app_modules:
                    handler_modules.append(module)
        return [m for m in handler_modules + app_modules if _reloadable(m)]

    def watched_files(self) -> list[Path]:
        return [Path(str(m.__file__)) for m in self.modules()]

    def reload(self) -> list[App]:
        for module in self.modules():
            importlib.reload(module)
        return self.load()


async def reload_into(server: Server, loader: AppLoader) -> bool:
    """Re-import and swap; on failure keep the old handlers and say why. One at a time:
    a reload asked for while one runs waits for it."""
    async with server.reload_lock:
        refusal = server.reload_refusal()
        if refusal is not None:
            log.error("reload refused: %s", refusal)
            return False
        previous = loader.apps
        try:
            await server.replace_apps(*loader.reload())
        except ReloadRefused as exc:
            loader.apps = previous
            log.error("reload refused: %s; the previous handlers stay in place", exc)
            return False
        except Exception:
            loader.apps = previous
            log.exception("reload failed; the previous handlers stay in place")
            return False
    log.info("reloaded handlers", extra={"routes": len(server.routes)})
    return True


async def watch(server: Server, loader: AppLoader, interval: float = 0.5) -> None:
    """`--reload`: poll the handler modules' mtimes and reload when one changes."""

    def stamp() -> dict[Path, float]:
        out = {}
        for path in loader.watched_files():
            try:
                out[path] = path.stat().st_mtime
            except OSError:
                continue
        return out

    seen = stamp()
    while True:
        await asyncio.sleep(interval)
        now = stamp()
        if now != seen:
            changed = sorted(str(p) for p in now.keys() | seen.keys() if now.get(p) != seen.get(p))
            log.info("changed: %s", ", ".join(changed))
            await reload_into(server, loader)
            seen = stamp()
