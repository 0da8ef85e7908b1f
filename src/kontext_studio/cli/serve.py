"""``kontext serve`` and ``kontext worker``: the studio and API, and queue workers."""

from __future__ import annotations

from typing import Annotated

import typer

from kontext_studio.cli.common import BaseOpt, DeviceOpt, MemoryOpt, ModelOpt, settings_for
from kontext_studio.cli.help import examples
from kontext_studio.cli.output import err, escape, handles_errors, loading, out, status_line
from kontext_studio.settings import Settings


@handles_errors
def serve(
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Address to bind; 127.0.0.1 is single-user mode.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    fake_backend: Annotated[bool, typer.Option(help="Run every tier on the FAKE backend (test patterns, no "
                                               "model): for trying the API and UI only.")] = False,
    model: ModelOpt = None,
    base: BaseOpt = None,
    device: DeviceOpt = None,
    memory_mode: MemoryOpt = None,
) -> None:
    """Start Kontext Studio: the web studio at / and the API (jobs run on the warm engine in-process)."""
    settings = settings_for(model, base, device, memory_mode)
    with loading("loading the web service"):
        import uvicorn

        from kontext_studio.core.engine import Editor
        from kontext_studio.service.server import build_app

    def editor_factory() -> Editor:
        if fake_backend:
            from kontext_studio.core.backends.fake import FakeBackend

            err.print("[yellow]fake backend:[/] outputs are test patterns, not edits")
            return Editor({"fake": FakeBackend()})
        from kontext_studio.bootstrap import build_editor

        return build_editor(settings, on_status=status_line)

    application = build_app(settings, host, editor_factory, say=lambda m: out.print(escape(m), highlight=False),
                            port=port)
    out.print(f"Kontext Studio on http://{host}:{port}/  (API docs: http://{host}:{port}/docs)", highlight=False)
    uvicorn.run(application, host=host, port=port, log_level="info")


@handles_errors
def worker(hostname: Annotated[str | None, typer.Option(metavar="NAME", help="Celery worker name (default: host "
                                                        "based).")] = None,
           models: Annotated[str | None, typer.Option("--models", metavar="MODEL,...",
                                                      help="Catalogue models this worker serves, comma separated "
                                                           "(e.g. klein-4b,qwen-edit): it takes only their queue "
                                                           "and loads them at start. Default: Kontext and the "
                                                           "hosted models.")] = None) -> None:
    """Run one Celery worker (one per GPU, concurrency 1) that executes queued jobs on the warm engine.

    Needs KONTEXT_BROKER_URL and KONTEXT_DATABASE_URL (PostgreSQL), and KONTEXT_HOME on storage shared with
    the API server.
    """
    from kontext_studio.core.catalogue import CATALOGUE
    from kontext_studio.service.jobs.dispatch_celery import run_worker
    from kontext_studio.service.server import celery_app

    names = [m.strip() for m in (models or "").split(",") if m.strip()]
    for name in names:
        CATALOGUE.resolve(name, "models")  # an unknown name is refused before the worker starts
    run_worker(celery_app(Settings.from_env()), hostname=hostname, models=names or None)


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``worker`` to ``app``."""
    app.command(epilog=examples("kontext serve", "kontext serve --fake-backend",
                                "kontext serve --host 0.0.0.0 --port 8080 --model ./kontext-dev"))(serve)
    app.command(epilog=examples("KONTEXT_BROKER_URL=redis://localhost:6379/0 kontext worker",
                                "kontext worker --models klein-4b,qwen-edit   (one GPU for these two)"))(worker)
