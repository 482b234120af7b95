"""Daemon configuration: frozen dataclasses with defaults in code, overridden by a YAML/TOML file and CLI flags.

`load_config(path)` reads `edge.yaml` / `edge.yml` (PyYAML) or `edge.toml` (the standard library's
`tomllib`, so TOML needs Python 3.11+; on 3.10 use YAML). Every key is checked against the
dataclasses: an unknown key or a wrong type is a `ConfigError` that names the dotted key
(`spool.max_rows must be an integer, got 'many'`). `with_overrides(cfg, {"spool.path": ...})` applies
command-line flags on top, with the same checks.

The password is never part of `repr()` and never logged; prefer `password_file` (a file readable
only by the daemon's user) or `password_env` (the name of an environment variable) to a literal.

It knows nothing about MQTT, audio or the bundle beyond their settings.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml


class ConfigError(ValueError):
    """A daemon config file or flag is invalid; the message names the key."""


@dataclass(frozen=True)
class TLSConfig:
    """TLS for `mqtts://` brokers. Without `ca` the system trust store is used."""

    ca: str | None = None  # CA certificate (PEM) that signed the broker's certificate
    cert: str | None = None  # client certificate (PEM), for brokers that require one
    key: str | None = None  # client private key (PEM)
    insecure: bool = False  # skip the broker hostname check: for lab setups only, never the default


@dataclass(frozen=True)
class SpoolConfig:
    """The durable alert outbox (spool.py)."""

    path: str = "aiot-edge-spool.db"
    max_rows: int = 10_000
    max_bytes: int = 64 << 20


@dataclass(frozen=True)
class DecisionConfig:
    """Debounce of the decision scorer (decision.py): k of the last n windows over the threshold raise an alert."""

    k: int = 3
    n: int = 5
    hysteresis: float = 0.0  # score units: an episode clears after n windows below threshold - hysteresis
    cooldown_s: float = 30.0  # minimum audio time between two alerts
    critical_factor: float = 1.5  # severity "critical" above threshold * critical_factor


@dataclass(frozen=True)
class InputConfig:
    """How the source is read (sources.py). rate/channels/format describe raw PCM on stdin or a microphone."""

    rate: int | None = None  # input sample rate; None = the bundle's (resampled to it otherwise)
    channels: int = 1  # interleaved channels, averaged to mono
    format: str = "s16le"  # s16le | s32le | f32le (raw PCM on stdin)
    poll_s: float = 1.0  # folder: how often to look for new files
    settle_s: float = 1.0  # folder: a file is taken once unchanged this long
    pattern: str = "*.wav"  # folder: which files
    state_file: str | None = None  # folder: done/failed list; default <spool path>.folder-state.json


@dataclass(frozen=True)
class MQTTOptions:
    """Connection details that rarely change."""

    protocol: str = "3.1.1"  # "3.1.1" or "5" (MQTT v5 adds message expiry)
    client_id: str | None = None  # default: aiot-edge-<site>-<device>
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0  # exponential backoff between reconnect attempts ...
    reconnect_max_s: float = 60.0  # ... capped here
    message_expiry_s: int | None = None  # MQTT v5 only: the broker drops undelivered messages after this
    max_inflight: int = 20  # spooled alerts handed to the client library at once
    ha_discovery_prefix: str = "homeassistant"


@dataclass(frozen=True)
class EdgeConfig:
    """Everything `aiot-edge run` needs. `bundle` and `source` have no useful default and must be given."""

    bundle: str | None = None
    source: str | None = None  # file:PATH | folder:DIR | stdin | alsa:DEV
    machine: str | None = None  # which machine of the bundle to listen for (may be omitted if it serves one)
    machine_id: str | None = None
    site: str = "default"
    device: str = field(default_factory=socket.gethostname)
    broker: str = "mqtt://localhost:1883"  # mqtt://H:P | mqtts://H:P | embedded
    tls: TLSConfig = field(default_factory=TLSConfig)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    password_env: str | None = None
    mqtt: MQTTOptions = field(default_factory=MQTTOptions)
    input: InputConfig = field(default_factory=InputConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    telemetry_every_s: float = 10.0  # 0 disables score telemetry
    health_every_s: float = 60.0  # how often counters are logged (and written to status_file)
    status_file: str | None = None  # JSON health counters, rewritten atomically
    providers: tuple[str, ...] | None = None  # onnxruntime execution providers; None = CPU
    threads: int | None = None  # onnxruntime intra-op threads; None = onnxruntime's default
    log_level: str = "INFO"
    log_format: str = "kv"  # "kv" (key=value) or "json"
    ha_discovery: bool = False  # publish Home Assistant discovery configs under mqtt.ha_discovery_prefix
    once: bool = False  # stop when the source is exhausted and the spool is empty
    once_timeout_s: float = 30.0  # with once: how long to wait for the spool to drain before giving up
    watchdog: bool = True  # send sd_notify READY/WATCHDOG when $NOTIFY_SOCKET is set

    def resolve_password(self) -> str | None:
        """The password from `password`, `password_file` or `password_env` (first one set)."""
        if self.password is not None:
            return self.password
        if self.password_file is not None:
            try:
                return Path(self.password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as err:
                raise ConfigError(f"password_file {self.password_file!r} cannot be read: {err.strerror}") from err
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(f"password_env names ${self.password_env}, which is not set")
            return value
        return None

    @property
    def topic_prefix(self) -> str:
        """`aiot/<site>/<device>`."""
        return f"aiot/{self.site}/{self.device}"


@dataclass(frozen=True)
class BrokerAddress:
    """A parsed broker URL."""

    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    """`mqtt://H[:P]` (default port 1883) or `mqtts://H[:P]` (8883). `embedded` is resolved by the daemon."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"broker must be mqtt://HOST:PORT, mqtts://HOST:PORT or embedded, got {url!r}")
    if parts.username or parts.password:
        raise ConfigError("broker URL must not carry credentials; use the username and password_file keys")
    try:
        port = parts.port
    except ValueError as err:
        raise ConfigError(f"broker {url!r}: {err}") from err
    tls = parts.scheme == "mqtts"
    return BrokerAddress(parts.hostname, port or (8883 if tls else 1883), tls)


# ---------------------------------------------------------------------------------------------
# loading


def load_config(path: str | os.PathLike[str] | None = None) -> EdgeConfig:
    """Defaults, overridden by the YAML or TOML file at `path` (if given), validated."""
    if path is None:
        return validate(EdgeConfig())
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from err
    if path.suffix.lower() == ".toml":
        if sys.version_info < (3, 11):
            raise ConfigError(f"{path}: TOML configs need Python 3.11+ (tomllib); use YAML on this Python")
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML ({err})") from err
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    try:
        return validate(_build(EdgeConfig, data, ""))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def with_overrides(cfg: EdgeConfig, overrides: dict[str, Any]) -> EdgeConfig:
    """Apply dotted-key overrides (`{"spool.path": "x.db"}`); None values are skipped (flag not given)."""
    for key, value in overrides.items():
        if value is None:
            continue
        cfg = _replace_dotted(cfg, key.split("."), value, "")
    return validate(cfg)


def validate(cfg: EdgeConfig) -> EdgeConfig:
    """Cross-field checks that the type system cannot express."""
    if cfg.broker != "embedded":
        parse_broker_url(cfg.broker)
    if cfg.mqtt.protocol not in ("3.1.1", "5"):
        raise ConfigError(f"mqtt.protocol must be '3.1.1' or '5', got {cfg.mqtt.protocol!r}")
    if cfg.mqtt.message_expiry_s is not None and cfg.mqtt.protocol != "5":
        raise ConfigError("mqtt.message_expiry_s needs mqtt.protocol: '5'")
    if not 1 <= cfg.decision.k <= cfg.decision.n:
        raise ConfigError(f"decision.k must be between 1 and decision.n, got k={cfg.decision.k} n={cfg.decision.n}")
    if cfg.input.format.lower().replace("_", "") not in ("s16le", "s32le", "f32le"):
        raise ConfigError(f"input.format must be s16le, s32le or f32le, got {cfg.input.format!r}")
    if cfg.input.channels < 1 or (cfg.input.rate is not None and cfg.input.rate < 1):
        raise ConfigError("input.channels and input.rate must be positive")
    if cfg.decision.hysteresis < 0 or cfg.decision.cooldown_s < 0 or cfg.decision.critical_factor < 1:
        raise ConfigError("decision.hysteresis and decision.cooldown_s must be >= 0, decision.critical_factor >= 1")
    if cfg.spool.max_rows < 1 or cfg.spool.max_bytes < 1:
        raise ConfigError("spool.max_rows and spool.max_bytes must be positive")
    if cfg.mqtt.max_inflight < 1:
        raise ConfigError("mqtt.max_inflight must be positive")
    if not 1 <= cfg.mqtt.keepalive_s <= 65535:  # a 16-bit field in MQTT's CONNECT packet
        raise ConfigError(f"mqtt.keepalive_s must be between 1 and 65535, got {cfg.mqtt.keepalive_s}")
    if not 0 < cfg.mqtt.reconnect_min_s <= 3600:
        raise ConfigError(f"mqtt.reconnect_min_s must be > 0 and <= 3600, got {cfg.mqtt.reconnect_min_s:g}")
    if not cfg.mqtt.reconnect_min_s <= cfg.mqtt.reconnect_max_s <= 3600:
        raise ConfigError(f"mqtt.reconnect_max_s must be between mqtt.reconnect_min_s and 3600, "
                          f"got {cfg.mqtt.reconnect_max_s:g}")
    # poll_s: 0 would spin a core rescanning the folder; more than an hour looks like a unit mistake.
    if not 0.01 <= cfg.input.poll_s <= 3600:
        raise ConfigError(f"input.poll_s must be between 0.01 and 3600 seconds, got {cfg.input.poll_s:g}")
    if not 0 <= cfg.input.settle_s <= 3600:
        raise ConfigError(f"input.settle_s must be between 0 and 3600 seconds, got {cfg.input.settle_s:g}")
    if cfg.log_format not in ("kv", "json"):
        raise ConfigError(f"log_format must be 'kv' or 'json', got {cfg.log_format!r}")
    if cfg.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {cfg.log_level!r}")
    if sum(x is not None for x in (cfg.password, cfg.password_file, cfg.password_env)) > 1:
        raise ConfigError("give only one of password, password_file, password_env")
    if (cfg.tls.cert is None) != (cfg.tls.key is None):
        raise ConfigError("tls.cert and tls.key go together (client certificate and its key)")
    for name in ("site", "device"):
        value = getattr(cfg, name)
        if not value or any(c in value for c in "/+#"):
            raise ConfigError(f"{name} must be a non-empty MQTT topic level without '/', '+' or '#', got {value!r}")
    for name in ("telemetry_every_s", "health_every_s", "once_timeout_s"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0")
    return cfg


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown key '{dotted}' (known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def _replace_dotted(obj: Any, keys: list[str], value: Any, prefix: str) -> Any:
    head, rest = keys[0], keys[1:]
    dotted = f"{prefix}{head}"
    names = {f.name for f in dataclasses.fields(obj)}
    if head not in names:
        raise ConfigError(f"unknown key '{dotted}'")
    if rest:
        inner = getattr(obj, head)
        if not dataclasses.is_dataclass(inner):
            raise ConfigError(f"key '{dotted}' has no sub-keys")
        return dataclasses.replace(obj, **{head: _replace_dotted(inner, rest, value, dotted + ".")})
    return dataclasses.replace(obj, **{head: _coerce(value, typing.get_type_hints(type(obj))[head], dotted)})


SECRET_KEYS = frozenset({"password"})  # values never shown in an error message


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the annotation `hint`; returns the value converted where lossless.

    The error for a secret key names the key and the type, never the value.
    """
    if key in SECRET_KEYS:
        try:
            return _coerce_value(value, hint, key)
        except ConfigError:
            raise ConfigError(f"{key} must be a string, got a {type(value).__name__} (value not shown; "
                              "quote it in YAML, or use password_file / password_env)") from None
    return _coerce_value(value, hint, key)


def _coerce_value(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key} has the wrong type: " + "; ".join(errors))
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
        return _build(hint, value, key + ".")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint)[:1]
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if key == "mqtt.protocol" and value == 5 and not isinstance(value, bool):
            return "5"  # YAML and TOML read `protocol: 5` as a number
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint!r}")  # a bug in this module, not in the file
