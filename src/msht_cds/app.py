"""FastAPI application factory. The library is loaded before the first request; a library
that fails lint stops start-up, while a failed reload keeps the last good one serving."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .config import Settings, get_settings
from .errors import ConfigurationError
from .logs import configure_logging, get_logger
from .routes import outcome, router
from .runtime import Runtime, freeze_long_lived
from .service import Knowledge, load_knowledge

log = get_logger("msht_cds.app")


def create_app(settings: Settings | None = None, knowledge: Knowledge | None = None) -> FastAPI:
    """Build the app; `knowledge` may be passed in when it is already loaded (tests, tools)."""
    settings = settings or get_settings()
    problems = settings.serving_problems()
    if problems:
        raise ConfigurationError("; ".join(problems))
    configure_logging(settings.log_format)
    if knowledge is None:
        knowledge = load_knowledge(Path(settings.library_dir), Path(settings.cards_dir))
    runtime = Runtime(settings, knowledge)
    runtime.storage.migrate()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.auth_enabled:
            log.warning(
                "AUTHENTICATION_DISABLED",
                detail="MSHT_CDS_AUTH=off: every caller is "
                "trusted. For local development on loopback only.",
            )
        log.info("started", library_version=knowledge.version, auth=settings.auth)
        runtime.renew_for_loop()
        freeze_long_lived()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(
                signal.SIGHUP, lambda: loop.create_task(anyio.to_thread.run_sync(runtime.reload))
            )
        watcher = (
            asyncio.create_task(_watch_library(runtime, settings.reload_interval_seconds))
            if settings.reload_interval_seconds > 0
            else None
        )
        yield
        if watcher is not None:
            watcher.cancel()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGHUP)
        await runtime.aclose()

    app = FastAPI(
        title="msht-cds",
        version=__version__,
        description="CDS Hooks 2.0 service: child modern slavery and human trafficking "
        "indicators and referral pathways for paediatricians.",
        docs_url=settings.docs_url,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
        return outcome(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return outcome(400, "invalid", "the request parameters are not valid")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected_error", error_type=type(exc).__name__)
        return outcome(500, "exception", "internal error; the incident has been logged")

    app.include_router(router)
    if settings.preview_enabled:
        # Imported only when served: the preview's modules cost a worker ~4 MB.
        from .preview import router as preview_router

        app.include_router(preview_router)
    return app


async def _watch_library(runtime: Runtime, interval: float) -> None:
    """Every worker polls the library files, so an edit reaches all workers and replicas that
    share the folder; a broken edit is rejected and the last good library keeps serving. The
    watcher outlives any failure: a later fix must still go live."""
    while True:
        await asyncio.sleep(interval)
        try:
            await anyio.to_thread.run_sync(runtime.reload_if_changed)
        except Exception as exc:  # logged by type only; the watcher must go on
            runtime.metrics.library_reload_failures.inc()
            log.error("library_reload_failed", error_type=type(exc).__name__)


def app_from_environment() -> FastAPI:
    """Entry point for `uvicorn msht_cds.app:app_from_environment --factory`."""
    return create_app(get_settings())
