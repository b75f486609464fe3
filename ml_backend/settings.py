"""Runtime settings of the Label Studio ML backend, all from environment variables.

>>> settings = Settings.from_env()                      # os.environ
>>> settings = Settings.from_env({"PORT": "9191"})      # any mapping (tests)

Every setting is declared once in :data:`SETTINGS` (variable name, aliases, default, parser and
meaning); :meth:`Settings.from_env` reads them and reports *every* invalid value at once in a
:class:`SettingsError`, and :func:`settings_table_markdown` renders the same declarations as the
README table, so the documentation cannot drift from the code.

Secrets (``LABEL_STUDIO_API_KEY``, ``BASIC_AUTH_PASS``) never appear in ``repr()`` or in
:meth:`Settings.summary`; URLs with credentials (``http://user:password@host``) are refused
without echoing them.

Safe by default (``docs/security.md``): the server binds ``127.0.0.1``; binding any other address
needs ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` or the explicit ``SAFIRE_ALLOW_UNAUTHENTICATED=true``.

The value parsers (raw string -> value or ``ValueError``) are in :mod:`ml_backend.settings_parsers`;
this module holds the declarations, :class:`Settings` and the download-only settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .settings_parsers import (  # noqa: F401 - is_loopback_host and redact are re-exported too
    _bool,
    _device,
    _float_range,
    _hosts,
    _int_range,
    _log_level,
    _networks,
    _opt_str,
    _prediction_score,
    _sources,
    _str,
    _trainable,
    _url,
    is_loopback_host,
    redact,
)

__all__ = ["SETTINGS", "Settings", "SettingsError", "Spec", "download_settings", "is_loopback_host",
           "settings_table_markdown"]

MB = 1024 * 1024


class SettingsError(ValueError):
    """One or more environment variables hold invalid values; ``problems`` lists them all."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("invalid backend settings:\n" + "\n".join(f"  - {p}" for p in self.problems))


# ------------------------------------------------------------------------------------------------
# declarations: the single source of truth for names, defaults and meanings
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One setting: the field of :class:`Settings`, its variable (and aliases), default and meaning."""

    field: str
    env: str
    default: str
    parse: Callable[[str], Any]
    help: str
    aliases: Tuple[str, ...] = ()
    secret: bool = False
    group: str = ""


SETTINGS: Tuple[Spec, ...] = (
    # -- Label Studio connection
    Spec("label_studio_url", "LABEL_STUDIO_URL", "", _url,
         "Base URL of Label Studio as seen from the backend (used to download `/data/upload/...` "
         "images and to presign cloud URIs). Inside docker do not use `localhost`.",
         aliases=("LABEL_STUDIO_HOST",), group="Label Studio"),
    Spec("label_studio_api_key", "LABEL_STUDIO_API_KEY", "", _str,
         "API key for image downloads: a Personal Access Token (JWT, exchanged at "
         "`/api/token/refresh/` and sent as `Bearer`) or a legacy token (sent as `Token`).",
         aliases=("LABEL_STUDIO_ACCESS_TOKEN",), secret=True, group="Label Studio"),
    Spec("allowed_hosts", "SAFIRE_ALLOWED_HOSTS", "", _hosts,
         "Comma-separated extra hosts (`host` or `host:port`) plain http(s) image URLs may come from; "
         "the Label Studio host is always allowed. No credentials are sent to them.",
         group="Label Studio"),
    Spec("allowed_networks", "SAFIRE_ALLOWED_NETWORKS", "", _networks,
         "Comma-separated networks (CIDR) downloads may connect to besides public addresses, e.g. the "
         "private network of an allowed host or of a storage bucket Label Studio presigns to. Label "
         "Studio's own host may always be loopback or private; cloud metadata addresses are always refused.",
         group="Label Studio"),
    Spec("local_files_document_root", "LOCAL_FILES_DOCUMENT_ROOT", "", _opt_str,
         "Label Studio's local-files root; with LOCAL_FILES_SERVING_ENABLED, `/data/local-files/?d=...` "
         "images are read from disk under it (confined to the root) instead of downloaded.",
         aliases=("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT",), group="Label Studio"),
    Spec("local_files_serving_enabled", "LOCAL_FILES_SERVING_ENABLED", "false", _bool,
         "As in Label Studio: local-files serving is on (the backend reads them from "
         "LOCAL_FILES_DOCUMENT_ROOT when that is set, else downloads them from Label Studio).",
         aliases=("LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED",), group="Label Studio"),
    Spec("fetch_timeout", "SAFIRE_FETCH_TIMEOUT", "10", _float_range(0.1, 600),
         "Seconds allowed to connect and between received bytes when downloading an image "
         "(the whole download may take at most 6x this).", group="Label Studio"),
    Spec("max_image_bytes", "SAFIRE_MAX_IMAGE_BYTES", str(50 * MB), _int_range(1024),
         "Largest image file accepted, in bytes (downloads abort as soon as they exceed it).",
         group="Label Studio"),
    Spec("max_pixels", "SAFIRE_MAX_PIXELS", str(40_000_000), _int_range(1),
         "Largest image accepted, in pixels (checked from the header before decoding).",
         group="Label Studio"),
    # -- model
    Spec("checkpoint", "SAFIRE_CHECKPOINT", "", _opt_str,
         "Base model weights (our checkpoint or the official `safire.pth`); empty: the embedded "
         "default model. Projects with a published fine-tuned version use that instead.", group="Model"),
    Spec("variant", "SAFIRE_VARIANT", "", _opt_str,
         "Model variant (`vit_b`, `native`, `tiny`, `micro`, `native_micro`) when the checkpoint does not record it.", group="Model"),
    Spec("device", "SAFIRE_DEVICE", "cpu", _device, "Torch device: cpu, cuda, cuda:N, mps or auto.",
         group="Model"),
    Spec("threads", "SAFIRE_THREADS", "1", _int_range(1, 256),
         "Torch compute threads per process. 1 is 3-4x faster than 2 when other processes share "
         "the CPU.", group="Model"),
    Spec("compute_slots", "SAFIRE_COMPUTE_SLOTS", "0", _int_range(0, 256),
         "Model computations running at once per process (clicks go first); 0: CPU cores / "
         "SAFIRE_THREADS.", group="Model"),
    Spec("model_dir", "MODEL_DIR", "./models", _str,
         "Folder of fine-tuned versions per project (`<project>/<version>/model.pt`, `CURRENT`).",
         group="Model"),
    Spec("cache_mb", "SAFIRE_CACHE_MB", "512", _int_range(0),
         "Image-embedding cache size in MiB (0 disables it).", group="Model"),
    Spec("cache_ttl", "SAFIRE_CACHE_TTL", "3600", _float_range(0),
         "Seconds a cached embedding stays valid (0: no expiry).", group="Model"),
    # -- prediction
    Spec("sources", "SAFIRE_SOURCES", "auto", _sources,
         'Number of sources per image for pre-annotation: "auto" or 1..16 (the BrushLabels '
         "`safire_sources` attribute overrides it).", group="Prediction"),
    Spec("max_sources", "SAFIRE_MAX_SOURCES", "8", _int_range(1, 16),
         "Largest number of sources a label config (`safire_sources`) may ask for: HTTP 400 above it.",
         group="Prediction"),
    Spec("grid", "SAFIRE_GRID", "16", _int_range(2, 64),
         "Prompt grid of the partition (g x g points; `safire_grid` overrides it).", group="Prediction"),
    Spec("max_grid", "SAFIRE_MAX_GRID", "32", _int_range(2, 64),
         "Largest prompt grid a label config (`safire_grid`) may ask for: HTTP 400 above it (the grid's "
         "masks take g x g x 256 KiB with the official weights).", group="Prediction"),
    Spec("seed", "SAFIRE_SEED", "0", _int_range(0), "Seed of the partition's clustering.",
         group="Prediction"),
    Spec("prediction_score", "SAFIRE_PREDICTION_SCORE", "forgery", _prediction_score,
         "What a pre-annotation's `score` (the Data Manager's Prediction score column) holds: `forgery` "
         "(image-level forgery score) or `uncertainty` (high: the model is unsure, label it next). "
         "The provenance record keeps both; the answer to `/predict` also has an `uncertainty` key.",
         group="Prediction"),
    # -- training
    Spec("start_training_each_n_updates", "START_TRAINING_EACH_N_UPDATES", "0", _int_range(0),
         "Start a fine-tuning job after every N created/updated annotations of a project (0: only "
         'the "Start Training" button). Counted per server process.', group="Training"),
    Spec("train_steps", "SAFIRE_TRAIN_STEPS", "300", _int_range(1), "Optimizer steps per fine-tuning job.",
         group="Training"),
    Spec("train_batch", "SAFIRE_TRAIN_BATCH", "4", _int_range(1, 1024), "Images per fine-tuning step.",
         group="Training"),
    Spec("train_trainable", "SAFIRE_TRAIN_TRAINABLE", "adapter+decoder", _trainable,
         "Parts fine-tuned, joined by `+`: adapter, decoder, encoder, prompt, all.", group="Training"),
    Spec("train_lr", "SAFIRE_TRAIN_LR", "1e-4", _float_range(0, 1, lo_open=True),
         "Learning rate of fine-tuning jobs.", group="Training"),
    Spec("train_threads", "SAFIRE_TRAIN_THREADS", "1", _int_range(1, 256),
         "Torch threads of a fine-tuning job process.", group="Training"),
    Spec("val_fraction", "SAFIRE_VAL_FRACTION", "0.2", _float_range(0, 0.9),
         "Fraction of annotated tasks held out to validate a fine-tuned version before publishing it.",
         group="Training"),
    Spec("train_replay", "SAFIRE_TRAIN_REPLAY", "0.5", _float_range(0, 0.9),
         "Share of each fine-tuning job's samples that are generated composites of the default "
         "model's training recipe (replay), so learning a project's forgeries does not unlearn the "
         "others; 0: the project's annotations only.", group="Training"),
    Spec("train_min_tasks", "SAFIRE_TRAIN_MIN_TASKS", "10", _int_range(2),
         "Fewest usable annotated tasks a fine-tuning job trains on; below it the job records that "
         "there are too few annotations and publishes nothing.", group="Training"),
    Spec("train_min_gain", "SAFIRE_TRAIN_MIN_GAIN", "0.0", _float_range(-1, 1),
         "A fine-tuned version is served only if its validation pmIoU (K given) beats its "
         "parent's by more than this; otherwise it is kept as a candidate (`GET /versions`).",
         group="Training"),
    Spec("train_fit_tasks", "SAFIRE_TRAIN_FIT_TASKS", "10", _int_range(0, 1000),
         "Training tasks on which a fine-tuning job also evaluates parent and child (the job record's "
         "`fit`: did the child learn the annotations it saw?); 0: not measured.", group="Training"),
    Spec("max_jobs", "SAFIRE_MAX_JOBS", "1", _int_range(1, 64),
         "Retraining jobs running at once over all projects (one per project at most); a Start Training "
         "above it gets HTTP 429.", group="Training"),
    # -- server
    Spec("host", "HOST", "127.0.0.1", _str,
         "Address the server binds to. Any address other than loopback (e.g. `0.0.0.0` in docker) needs "
         "BASIC_AUTH_USER/PASS or SAFIRE_ALLOW_UNAUTHENTICATED.", group="Server"),
    Spec("port", "PORT", "9090", _int_range(1, 65535), "Port the server listens on.", group="Server"),
    Spec("workers", "WORKERS", "1", _int_range(1, 64),
         "gunicorn worker processes (each loads the model and has its own cache; keep 1 on CPU).",
         group="Server"),
    Spec("server_threads", "THREADS", "8", _int_range(1, 256),
         "Request threads per worker (gthread); model work is still limited by SAFIRE_COMPUTE_SLOTS.",
         group="Server"),
    Spec("request_timeout", "SAFIRE_REQUEST_TIMEOUT", "300", _int_range(0),
         "gunicorn worker timeout in seconds (0: none); keep it above the longest batch prediction.",
         group="Server"),
    Spec("max_request_bytes", "SAFIRE_MAX_REQUEST_BYTES", str(64 * MB), _int_range(1024),
         "Largest request body accepted (HTTP 413 above it); interactive requests carry the task's "
         "existing masks.", group="Server"),
    Spec("max_tasks", "SAFIRE_MAX_TASKS", "100", _int_range(1, 100_000),
         "Most tasks (or URLs) in one `/predict` or `/prewarm` request: HTTP 400 above it (Label Studio "
         "sends all tasks selected for Retrieve Predictions in one request and waits 100 s).", group="Server"),
    Spec("max_label_config_bytes", "SAFIRE_MAX_LABEL_CONFIG_BYTES", str(128 * 1024), _int_range(1024),
         "Largest label config accepted (HTTP 400 above it); at most 1000 projects' configs, 16 MiB in "
         "all, are remembered.", group="Server"),
    Spec("basic_auth_user", "BASIC_AUTH_USER", "", _str,
         "With BASIC_AUTH_PASS: HTTP basic auth required on every endpoint except `/health` and `/`.",
         aliases=("ML_SERVER_BASIC_AUTH_USER",), group="Server"),
    Spec("basic_auth_pass", "BASIC_AUTH_PASS", "", _str, "Password for BASIC_AUTH_USER.",
         aliases=("ML_SERVER_BASIC_AUTH_PASS",), secret=True, group="Server"),
    Spec("allow_unauthenticated", "SAFIRE_ALLOW_UNAUTHENTICATED", "false", _bool,
         "Listen on a non-loopback HOST without basic auth (anyone who can reach the port can then run "
         "predictions, start training and read /metrics). Off: such a server refuses to start.",
         group="Server"),
    Spec("log_level", "LOG_LEVEL", "INFO", _log_level, "DEBUG, INFO, WARNING or ERROR.", group="Server"),
)

_BY_FIELD: Dict[str, Spec] = {s.field: s for s in SETTINGS}


def _default(name: str) -> Any:
    return _BY_FIELD[name].parse(_BY_FIELD[name].default)


@dataclass(frozen=True)
class Settings:
    """Validated runtime settings; build them with :meth:`from_env` (defaults match :data:`SETTINGS`)."""

    label_studio_url: str = ""
    label_studio_api_key: str = field(default="", repr=False)
    allowed_hosts: Tuple[str, ...] = ()
    allowed_networks: Tuple[str, ...] = ()
    local_files_document_root: Optional[str] = None
    local_files_serving_enabled: bool = False
    fetch_timeout: float = 10.0
    max_image_bytes: int = 50 * MB
    max_pixels: int = 40_000_000
    checkpoint: Optional[str] = None
    variant: Optional[str] = None
    device: str = "cpu"
    threads: int = 1
    compute_slots: int = 0
    model_dir: str = "./models"
    cache_mb: int = 512
    cache_ttl: float = 3600.0
    sources: Union[str, int] = "auto"
    max_sources: int = 8
    grid: int = 16
    max_grid: int = 32
    seed: int = 0
    prediction_score: str = "forgery"
    start_training_each_n_updates: int = 0
    train_steps: int = 300
    train_batch: int = 4
    train_trainable: str = "adapter+decoder"
    train_lr: float = 1e-4
    train_threads: int = 1
    val_fraction: float = 0.2
    train_replay: float = 0.5
    train_min_tasks: int = 10
    train_min_gain: float = 0.0
    train_fit_tasks: int = 10
    max_jobs: int = 1
    host: str = "127.0.0.1"
    port: int = 9090
    workers: int = 1
    server_threads: int = 8
    request_timeout: int = 300
    max_request_bytes: int = 64 * MB
    max_tasks: int = 100
    max_label_config_bytes: int = 128 * 1024
    basic_auth_user: str = ""
    basic_auth_pass: str = field(default="", repr=False)
    allow_unauthenticated: bool = False
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "Settings":
        """Read every setting from ``environ`` (default ``os.environ``); raise :class:`SettingsError`."""
        env = os.environ if environ is None else environ
        values: Dict[str, Any] = {}
        problems: List[str] = []
        for spec in SETTINGS:
            name, raw = spec.env, env.get(spec.env)
            if raw is None:
                for alias in spec.aliases:
                    if env.get(alias) is not None:
                        name, raw = alias, env[alias]
                        break
            if raw is None:
                raw = spec.default
            try:
                values[spec.field] = spec.parse(raw)
            except ValueError as e:
                shown = "<hidden>" if spec.secret else repr(redact(raw))
                problems.append(f"{name}={shown}: {e}")
        if "basic_auth_user" in values and "basic_auth_pass" in values:
            if bool(values["basic_auth_user"]) != bool(values["basic_auth_pass"]):
                problems.append("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
        if isinstance(values.get("sources"), int) and "max_sources" in values \
                and values["sources"] > values["max_sources"]:
            problems.append(f"SAFIRE_SOURCES={values['sources']} is above SAFIRE_MAX_SOURCES={values['max_sources']}")
        if "grid" in values and "max_grid" in values and values["grid"] > values["max_grid"]:
            problems.append(f"SAFIRE_GRID={values['grid']} is above SAFIRE_MAX_GRID={values['max_grid']}")
        host = values.get("host")
        if (host is not None and not is_loopback_host(host) and values.get("allow_unauthenticated") is False
                and not (values.get("basic_auth_user") and values.get("basic_auth_pass"))):
            problems.append(
                f"HOST={host!r} listens beyond this machine without authentication: anyone who reaches the port "
                "could run predictions, start training jobs and read /metrics. Set BASIC_AUTH_USER and "
                "BASIC_AUTH_PASS (and the same user and password in Label Studio: Settings > Model > Connect "
                "Model > Authentication: Basic Authentication), or SAFIRE_ALLOW_UNAUTHENTICATED=true to accept "
                "that, or HOST=127.0.0.1")
        root = values.get("local_files_document_root")
        if root and values.get("local_files_serving_enabled") and not os.path.isdir(root):
            problems.append(f"LOCAL_FILES_DOCUMENT_ROOT={root!r} is not a directory")
        if problems:
            raise SettingsError(problems)
        return cls(**values)

    # -- derived values ---------------------------------------------------------------------
    @property
    def cache_bytes(self) -> int:
        return int(self.cache_mb) * MB

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_user and self.basic_auth_pass)

    @property
    def loopback_only(self) -> bool:
        """The server listens on loopback only (``HOST`` is 127.0.0.1, ::1 or localhost)."""
        return is_loopback_host(self.host)

    @property
    def effective_compute_slots(self) -> int:
        if self.compute_slots > 0:
            return self.compute_slots
        return max(1, (os.cpu_count() or 1) // max(1, self.threads))

    def summary(self) -> Dict[str, Any]:
        """All settings as a dict for logs and ``/metrics``; secrets are reported as set/unset only."""
        out: Dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            spec = _BY_FIELD.get(f.name)
            if spec is not None and spec.secret:
                v = "<set>" if v else ""
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


DOWNLOAD_FIELDS = ("label_studio_url", "label_studio_api_key", "allowed_hosts", "allowed_networks",
                   "fetch_timeout", "max_image_bytes", "max_pixels")


def download_settings(environ: Optional[Mapping[str, str]] = None, **overrides: Any) -> Any:
    """Only the settings image downloads use (:data:`DOWNLOAD_FIELDS`), from the environment.

    For tools that download like the server but are not the server (``safire export``, retraining
    jobs): the server-only checks (``HOST`` and authentication) do not apply. ``overrides`` replace
    parsed values (None: keep). Raises :class:`SettingsError`.
    """
    from types import SimpleNamespace

    env = os.environ if environ is None else environ
    values: Dict[str, Any] = {}
    problems: List[str] = []
    for name in DOWNLOAD_FIELDS:
        spec = _BY_FIELD[name]
        raw = env.get(spec.env)
        for alias in spec.aliases:
            if raw is None and env.get(alias) is not None:
                raw = env[alias]
        try:
            values[name] = spec.parse(spec.default if raw is None else raw)
        except ValueError as e:
            problems.append(f"{spec.env}={'<hidden>' if spec.secret else repr(redact(raw or ''))}: {e}")
    for key, value in overrides.items():
        if value is not None:
            try:
                values[key] = _BY_FIELD[key].parse(value) if isinstance(value, str) else value
            except ValueError as e:
                shown = "<hidden>" if _BY_FIELD[key].secret else repr(redact(value))
                problems.append(f"{_BY_FIELD[key].env}={shown}: {e}")
    if problems:
        raise SettingsError(problems)
    return SimpleNamespace(**values)


def settings_table_markdown() -> str:
    """The settings as a Markdown table (variable, default, meaning), grouped like :data:`SETTINGS`."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    group = None
    for s in SETTINGS:
        if s.group != group:
            group = s.group
            lines.append(f"| **{group}** | | |")
        name = f"`{s.env}`" + "".join(f" (alias `{a}`)" for a in s.aliases)
        default = f"`{s.default}`" if s.default != "" else "(empty)"
        lines.append(f"| {name} | {default} | {s.help.replace('|', '/')} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m ml_backend.settings -> the README table
    print(settings_table_markdown())
