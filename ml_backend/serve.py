"""``safire serve``: run the Label Studio ML backend.

    safire serve                          gunicorn, gthread workers, settings from the environment
    safire serve --port 9191 --threads 4  command-line options override the environment
    safire serve --dev                    Flask's development server (one process, reloader off)
    safire serve --check                  load the model, print what would serve, exit

All settings are environment variables (``python -m ml_backend.settings`` prints the table). The
torch thread count (``SAFIRE_THREADS``) is applied before the model loads. Each gunicorn worker
loads the model once (no ``--preload``, so CUDA works in workers) and keeps its own embedding
cache: keep ``WORKERS=1`` and use ``THREADS`` for concurrency.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Dict, List, Optional

from .settings import Settings, SettingsError

log = logging.getLogger("safire.serve")


class SafeFormatter(logging.Formatter):
    """Log lines whose message cannot contain line breaks or terminal escapes (tracebacks excepted).

    The backend escapes request-supplied strings itself (``ml_backend.fetch.log_text``); this is
    the net under it, so one log record is always one line.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        msg = record.message
        if not msg.isprintable():
            record.message = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in msg)
        return super().formatMessage(record)


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("werkzeug").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("urllib3").setLevel(max(logging.WARNING, root.level))


def configure_torch(settings: Settings) -> None:
    """Set torch's thread count (before any model work) from ``SAFIRE_THREADS``."""
    os.environ.setdefault("OMP_NUM_THREADS", str(settings.threads))
    import torch

    torch.set_num_threads(settings.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set or parallel work already started
        pass


def _banner(settings: Settings, app: Any, where: Optional[str]) -> str:
    backend = app.extensions["safire"]
    base = backend.registry.base
    meta = getattr(base.model, "meta", {}) or {}
    ls = settings.label_studio_url or "(LABEL_STUDIO_URL not set: only absolute/data: image URLs work)"
    head = f"safire ML backend listening on {where}" if where else "safire ML backend check OK"
    if settings.auth_enabled:
        access = "basic auth on"
    elif settings.loopback_only:
        access = "loopback only, no auth"
    else:
        access = (f"WARNING: no authentication on {settings.host} (SAFIRE_ALLOW_UNAUTHENTICATED): anyone "
                  "who reaches this port can run predictions and start training")
    return (f"{head} (pid {os.getpid()}): model {base.version} "
            f"[{meta.get('variant')}, {settings.device}, {settings.threads} torch thread(s)], "
            f"Label Studio {ls}, model dir {os.path.abspath(settings.model_dir)}, {access}")


def gunicorn_options(settings: Settings) -> Dict[str, Any]:
    """The gunicorn configuration used by ``safire serve`` (also read by ``gunicorn_conf.py``)."""
    return {
        "bind": f"{settings.host}:{settings.port}" if ":" not in settings.host else f"[{settings.host}]:{settings.port}",
        "workers": settings.workers,
        "worker_class": "gthread",
        "threads": settings.server_threads,
        "timeout": settings.request_timeout,
        "graceful_timeout": 30,
        "keepalive": 5,
        "accesslog": None,  # the app logs one line per request itself
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "preload_app": False,
        "proc_name": "safire-ml-backend",
        "control_socket_disable": True,  # gunicorn >= 23: one shared path would clash between servers
    }


def run_gunicorn(settings: Settings) -> None:
    from gunicorn.app.base import BaseApplication

    from .app import create_app

    class _App(BaseApplication):
        def __init__(self) -> None:
            self.options = gunicorn_options(settings)
            super().__init__()

        def load_config(self) -> None:
            for key, value in self.options.items():
                if key in self.cfg.settings and value is not None:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            configure_logging(settings.log_level)
            configure_torch(settings)
            app = create_app(settings)
            print(_banner(settings, app, f"http://{self.options['bind']}"), flush=True)
            return app

    _App().run()


def model_problem(settings: Settings) -> Optional[str]:
    """A readable reason the base model cannot load, checked before gunicorn starts workers."""
    if settings.checkpoint:
        if not os.path.isfile(settings.checkpoint):
            return f"SAFIRE_CHECKPOINT={settings.checkpoint!r} is not a file"
        return None
    from safire.build import DEFAULT_CHECKPOINT

    if not DEFAULT_CHECKPOINT.is_file():
        return (f"the embedded default model is missing ({DEFAULT_CHECKPOINT}); set SAFIRE_CHECKPOINT to a "
                "checkpoint (e.g. one written by `safire train`)")
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="safire serve", description="Run the Label Studio ML backend (gunicorn).",
                                epilog="Every option also has an environment variable; see "
                                       "`python -m ml_backend.settings` for the full list.")
    p.add_argument("--host", help="bind address (HOST, default 127.0.0.1; another address needs BASIC_AUTH_USER/PASS "
                                  "or SAFIRE_ALLOW_UNAUTHENTICATED=true)")
    p.add_argument("-p", "--port", type=int, help="port (PORT, default 9090)")
    p.add_argument("--workers", type=int, help="gunicorn worker processes (WORKERS, default 1)")
    p.add_argument("--threads", type=int, help="request threads per worker (THREADS, default 8)")
    p.add_argument("--model-dir", help="published versions (MODEL_DIR)")
    p.add_argument("--checkpoint", help="base model weights (SAFIRE_CHECKPOINT)")
    p.add_argument("--log-level", help="LOG_LEVEL")
    p.add_argument("--dev", action="store_true", help="Flask's development server instead of gunicorn")
    p.add_argument("--check", action="store_true", help="load settings and model, print them, exit")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {"HOST": args.host, "PORT": args.port, "WORKERS": args.workers, "THREADS": args.threads,
                 "MODEL_DIR": args.model_dir, "SAFIRE_CHECKPOINT": args.checkpoint, "LOG_LEVEL": args.log_level}
    for key, value in overrides.items():
        if value is not None:
            os.environ[key] = str(value)
    try:
        settings = Settings.from_env()
    except SettingsError as e:
        print(f"safire serve: {e}", file=sys.stderr)
        return 2
    problem = model_problem(settings)
    if problem:
        print(f"safire serve: {problem}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    configure_torch(settings)
    if args.check or args.dev:
        from .app import create_app

        try:
            app = create_app(settings)
        except Exception as e:
            print(f"safire serve: cannot start: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        if args.check:
            print(_banner(settings, app, None))
            return 0
        print(_banner(settings, app, f"http://{settings.host}:{settings.port} (Flask dev server)"), flush=True)
        app.run(host=settings.host, port=settings.port, threaded=True, use_reloader=False)
        return 0
    run_gunicorn(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
