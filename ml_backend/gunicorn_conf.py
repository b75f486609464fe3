"""gunicorn configuration for running the backend without ``safire serve``.

    gunicorn -c ml_backend/gunicorn_conf.py 'ml_backend.app:create_app()'

Bind address, workers, threads, timeout and log level come from the same environment variables
as ``safire serve`` (HOST, PORT, WORKERS, THREADS, SAFIRE_REQUEST_TIMEOUT, LOG_LEVEL); torch's
thread count (SAFIRE_THREADS) is applied when each worker starts, before the model loads.
"""

from ml_backend.serve import configure_logging, configure_torch, gunicorn_options
from ml_backend.settings import Settings, SettingsError

try:
    _settings = Settings.from_env()
except SettingsError as _e:  # e.g. HOST=0.0.0.0 without BASIC_AUTH_USER/PASS: say why, do not start
    raise SystemExit(f"safire backend: {_e}") from None
_opts = gunicorn_options(_settings)

bind = _opts["bind"]
workers = _opts["workers"]
worker_class = _opts["worker_class"]
threads = _opts["threads"]
timeout = _opts["timeout"]
graceful_timeout = _opts["graceful_timeout"]
keepalive = _opts["keepalive"]
accesslog = _opts["accesslog"]
errorlog = _opts["errorlog"]
loglevel = _opts["loglevel"]
preload_app = False
proc_name = _opts["proc_name"]
control_socket_disable = True


def post_fork(server, worker):  # noqa: ARG001 - gunicorn hook signature
    configure_logging(_settings.log_level)
    configure_torch(_settings)
