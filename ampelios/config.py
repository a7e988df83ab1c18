"""The one configuration object, read from ``AMPELIOS_*`` environment variables.

Every setting is documented in the README's configuration table; nothing else in the
package reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import click

from ampelios.core.webhooks import SubscriptionRefused, read_subscriptions


class ConfigError(ValueError):
    """A setting has a value Ampelios cannot use; the message names the variable."""


def _port(name: str, raw: str) -> int:
    value = _positive_int(name, raw)
    if value > 65535:
        raise ConfigError(f"{name} must be a TCP port (1-65535), got {value}")
    return value


def _positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")
    return value


def _positive_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not value > 0:
        raise ConfigError(f"{name} must be positive, got {value}")
    return value


def _non_negative_float(name: str, raw: str) -> float:
    return 0.0 if raw.strip() in ("0", "0.0") else _positive_float(name, raw)


def _broker_url(name: str, raw: str) -> str:
    scheme = raw.split("://", 1)[0] if "://" in raw else ""
    if scheme not in ("kafka", "tansu"):
        raise ConfigError(
            f"{name} must look like kafka://host:port (Apache Kafka) or tansu://host:port (a Tansu broker), got {raw!r}"
        )
    return raw


AUTO = "auto"  # AMPELIOS_K: the number of segments chosen by ampelios.core.k_choice


def _segments(name: str, raw: str) -> tuple[int | None, dict[int, int | None]]:
    """``5``, ``auto`` or ``5,2=8,3=auto``: k for every source, then k for named sources
    (``None``: chosen by the rule of :mod:`ampelios.core.k_choice`)."""
    default: int | None = 5
    named_default = False
    by_source: dict[int, int | None] = {}
    for part in (p.strip() for p in raw.split(",") if p.strip()):
        source, _, k = part.rpartition("=")
        value = None if k.strip() == AUTO else _positive_int(name, k)
        if source:
            if not source.strip().isdigit():
                raise ConfigError(f"{name}: {source!r} is not a source id in {raw!r}")
            by_source[int(source)] = value
        elif not named_default:
            default, named_default = value, True
        else:
            raise ConfigError(f"{name} names the default k twice in {raw!r}")
    return default, by_source


def _event_map(name: str, raw: str) -> dict[str, str]:
    """``product_view=view,purchase=transaction,page_view=ignore``: a site's event names ->
    Ampelios's, or ``ignore`` (read and counted, not rejected)."""
    pairs: dict[str, str] = {}
    for part in (p.strip() for p in raw.split(",") if p.strip()):
        source, sep, target = (x.strip() for x in part.partition("="))
        if not sep or not source or target not in ("view", "addtocart", "transaction", "ignore"):
            raise ConfigError(
                f"{name}: {part!r} must look like name=view, name=addtocart, name=transaction or name=ignore"
            )
        if source in pairs:
            raise ConfigError(f"{name} maps {source!r} twice")
        pairs[source] = target
    return pairs


def _write_keys(name: str, raw: str) -> dict[str, int]:
    """``key1=1,key2=7``: the collector's write keys and the source each sends to."""
    keys: dict[str, int] = {}
    for part in (p.strip() for p in raw.split(",") if p.strip()):
        key, sep, source = (x.strip() for x in part.rpartition("="))
        if not sep or not key or not source.isdigit() or int(source) > 2**31 - 1:
            raise ConfigError(f"{name}: {part!r} must look like writekey=source_id (an integer)")
        if key in keys:
            raise ConfigError(f"{name} names the write key {key!r} twice")
        keys[key] = int(source)
    return keys


def _webhooks(name: str, raw: str) -> Path:
    """A JSON file of webhook subscriptions, read once here so that a wrong one stops the start."""
    path = Path(_text(name, raw))
    try:
        read_subscriptions(path)
    except SubscriptionRefused as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return path


def _local_broker(name: str, raw: str) -> str:
    if raw not in ("kafka", "tansu"):
        raise ConfigError(f"{name} must be kafka (keeps its state) or tansu (in memory), got {raw!r}")
    return raw


def _names(name: str, raw: str) -> tuple[str, ...]:
    """``a, b`` -> ``("a", "b")``: a comma-separated list without empty items."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _origins(name: str, raw: str) -> tuple[str, ...]:
    origins = _names(name, raw)
    for origin in origins:
        scheme, sep, rest = origin.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
            raise ConfigError(f"{name}: {origin!r} must be an origin such as https://shop.example.com")
    return origins


def _flag(name: str, raw: str) -> bool:
    if raw.strip().lower() not in ("true", "false", "1", "0"):
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    return raw.strip().lower() in ("true", "1")


def _text(name: str, raw: str) -> str:
    if not raw.strip():
        raise ConfigError(f"{name} must not be empty")
    return raw.strip()


@dataclass(frozen=True)
class Settings:
    """Ampelios settings. ``Settings.from_env()`` reads them; defaults suit one laptop.

    ``broker`` and ``database_url`` are ``None`` when Ampelios should start its own
    embedded broker or database (``ampelios up`` / ``ampelios demo``).
    """

    broker: str | None = None
    local_broker: str = "kafka"
    database_url: str | None = None
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    web_bind: str | None = None
    state_dir: Path = Path(".ampelios")
    data_dir: Path = Path("init-data")
    app_id: str = "ampelios"
    partitions: int = 8
    k: int | None = 5  # None: AMPELIOS_K=auto
    k_by_source: Mapping[int, int | None] = field(default_factory=dict)
    session_gap_minutes: float = 20.0
    replay_batch_events: int = 5000
    snapshot_seconds: float = 60.0
    snapshot_event_hours: float = 24.0
    active_days: float | None = None
    lateness_days: float | None = None
    history_days: float = 60.0
    wall_snapshot_days: float = 30.0
    recovery_timeout_seconds: float = 600.0
    event_map: Mapping[str, str] = field(default_factory=dict)
    write_keys: Mapping[str, int] = field(default_factory=dict)
    webhooks: Path | None = None  # a JSON file of webhook subscriptions (core/webhooks.py)
    api_token: str | None = None
    protect_visitors: bool = False
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    log_level: str = "info"

    @property
    def session_gap_ms(self) -> int:
        return round(self.session_gap_minutes * 60_000)

    @property
    def active_window_ms(self) -> int | None:
        """``AMPELIOS_ACTIVE_DAYS`` in milliseconds (``None``: every visitor stays active)."""
        return None if self.active_days is None else round(self.active_days * 86_400_000)

    @property
    def lateness_ms(self) -> int | None:
        """How far behind its partition's newest event an event may come and still be
        applied (ms): the window under ``AMPELIOS_ACTIVE_DAYS``, else
        ``AMPELIOS_LATENESS_DAYS`` (``None``: any event is applied)."""
        if self.active_window_ms is not None:
            return self.active_window_ms
        return None if self.lateness_days is None else round(self.lateness_days * 86_400_000)

    def k_for(self, source_id: int) -> int | None:
        """Number of segments of a source (``None``: chosen by :mod:`ampelios.core.k_choice`)."""
        return self.k_by_source.get(source_id, self.k)

    @property
    def web_bind_address(self) -> str:
        """The address the web server listens on (``web_host`` unless ``web_bind`` is set)."""
        return self.web_bind or self.web_host

    @property
    def web_url(self) -> str:
        """The URL other workers and clients reach this worker's web server at."""
        return f"http://{self.web_host}:{self.web_port}"

    @property
    def broker_url(self) -> str:
        """The broker a worker connects to (a local Kafka when none is configured)."""
        return self.broker or "kafka://127.0.0.1:9092"

    @property
    def worker_dir(self) -> Path:
        """Faust's data directory (RocksDB tables) inside the state directory."""
        return self.state_dir / "worker"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every ``AMPELIOS_*`` variable; unknown ``AMPELIOS_*`` names are errors."""
        env = os.environ if env is None else env
        parsers: dict[str, tuple[str, Callable[[str, str], Any]]] = {
            "AMPELIOS_BROKER": ("broker", _broker_url),
            "AMPELIOS_LOCAL_BROKER": ("local_broker", _local_broker),
            "AMPELIOS_DATABASE_URL": ("database_url", _text),
            "AMPELIOS_WEB_HOST": ("web_host", _text),
            "AMPELIOS_WEB_PORT": ("web_port", _port),
            "AMPELIOS_WEB_BIND": ("web_bind", _text),
            "AMPELIOS_STATE_DIR": ("state_dir", lambda n, r: Path(_text(n, r))),
            "AMPELIOS_DATA_DIR": ("data_dir", lambda n, r: Path(_text(n, r))),
            "AMPELIOS_APP_ID": ("app_id", _text),
            "AMPELIOS_PARTITIONS": ("partitions", _positive_int),
            "AMPELIOS_K": ("k", _segments),
            "AMPELIOS_SESSION_GAP_MINUTES": ("session_gap_minutes", _positive_float),
            "AMPELIOS_REPLAY_BATCH_EVENTS": ("replay_batch_events", _positive_int),
            "AMPELIOS_SNAPSHOT_SECONDS": ("snapshot_seconds", _positive_float),
            "AMPELIOS_SNAPSHOT_EVENT_HOURS": ("snapshot_event_hours", _non_negative_float),
            "AMPELIOS_ACTIVE_DAYS": ("active_days", _positive_float),
            "AMPELIOS_LATENESS_DAYS": ("lateness_days", _positive_float),
            "AMPELIOS_HISTORY_DAYS": ("history_days", _positive_float),
            "AMPELIOS_WALL_SNAPSHOT_DAYS": ("wall_snapshot_days", _positive_float),
            "AMPELIOS_RECOVERY_TIMEOUT_SECONDS": ("recovery_timeout_seconds", _positive_float),
            "AMPELIOS_EVENT_MAP": ("event_map", _event_map),
            "AMPELIOS_WRITE_KEYS": ("write_keys", _write_keys),
            "AMPELIOS_WEBHOOKS": ("webhooks", _webhooks),
            "AMPELIOS_API_TOKEN": ("api_token", _text),
            "AMPELIOS_PROTECT_VISITORS": ("protect_visitors", _flag),
            "AMPELIOS_ALLOWED_HOSTS": ("allowed_hosts", _names),
            "AMPELIOS_CORS_ORIGINS": ("cors_origins", _origins),
            "AMPELIOS_LOG_LEVEL": ("log_level", _text),
        }
        unknown = sorted(k for k in env if k.startswith("AMPELIOS_") and k not in parsers)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; see the README")
        values = {attr: parse(name, env[name]) for name, (attr, parse) in parsers.items() if env.get(name, "") != ""}
        if "k" in values:
            values["k"], values["k_by_source"] = values["k"]
        if values.get("protect_visitors") and "api_token" not in values:
            raise ConfigError("AMPELIOS_PROTECT_VISITORS needs AMPELIOS_API_TOKEN: the token is what protects them")
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The ``AMPELIOS_*`` variables that reproduce these settings in a child process."""
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "k":
                ks = [value, *(f"{s}={AUTO if k is None else k}" for s, k in sorted(self.k_by_source.items()))]
                value = ",".join(AUTO if k is None else str(k) for k in ks)
            elif value is None or f.name == "k_by_source":
                continue
            elif f.name in ("event_map", "write_keys"):
                value = ",".join(f"{name}={target}" for name, target in value.items())
            elif isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = str(value).lower()
            env[f"AMPELIOS_{f.name.upper()}"] = str(value)
        return env

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


class SettingsError(click.ClickException):
    """A bad ``AMPELIOS_*`` setting, as a command reports it: one line, exit code 2."""

    exit_code = 2


def load_settings() -> Settings:
    """``Settings.from_env()`` for a command: a bad setting ends it with one line that
    names the variable (no traceback, no usage text: the command line was right)."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None
