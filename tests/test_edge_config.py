"""aiot_edge.config: YAML/TOML into frozen dataclasses, errors that name the key, flag overrides, secrets."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from aiot_edge.cli import _overrides, _parser
from aiot_edge.config import ConfigError, EdgeConfig, load_config, parse_broker_url, with_overrides

EXAMPLE = Path(__file__).resolve().parents[1] / "edge" / "deploy" / "edge.example.yaml"


def test_yaml_overrides_defaults_and_is_frozen(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text("bundle: /b\nsource: stdin\nsite: plant\nspool: {path: /var/lib/x.db}\n"
                    "decision: {k: 2, n: 4}\nproviders: [cuda, cpu]\nmqtt: {protocol: 5}\n")
    cfg = load_config(path)
    assert cfg.site == "plant" and cfg.spool.path == "/var/lib/x.db" and cfg.spool.max_rows == 10_000
    assert (cfg.decision.k, cfg.decision.n, cfg.decision.cooldown_s) == (2, 4, 30.0)
    assert cfg.providers == ("cuda", "cpu") and cfg.mqtt.protocol == "5"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.site = "x"  # type: ignore[misc]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="TOML configs need tomllib (Python 3.11+)")
def test_toml(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('bundle = "/b"\ntelemetry_every_s = 5\n[tls]\nca = "/ca.pem"\n')
    cfg = load_config(path)
    assert cfg.telemetry_every_s == 5.0 and cfg.tls.ca == "/ca.pem"


@pytest.mark.parametrize("text, message", [
    ("colour: red\n", "unknown key 'colour'"),
    ("spool: {max_row: 3}\n", "unknown key 'spool.max_row'"),
    ("spool: {max_rows: many}\n", "spool.max_rows must be an integer, got 'many'"),
    ("ha_discovery: yes please\n", "ha_discovery must be true or false"),
    ("telemetry_every_s: fast\n", "telemetry_every_s must be a number"),
    ("tls: /ca.pem\n", "tls must be a mapping"),
    ("decision: {k: 4, n: 2}\n", "decision.k must be between 1 and decision.n"),
    ("broker: http://x\n", "broker must be mqtt://HOST:PORT"),
    ("device: a/b\n", "device must be a non-empty MQTT topic level"),
    ("mqtt: {message_expiry_s: 60}\n", "needs mqtt.protocol: '5'"),
    ("- a list\n", "expected a mapping"),
])
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        load_config(path)


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text("bundle: /from-file\nsite: file-site\nspool: {path: file.db}\n")
    args = _parser().parse_args(["run", "--config", str(path), "--site", "flag-site", "--spool", "flag.db",
                                 "--once", "--set", "decision.k=2", "--set", "mqtt.reconnect_max_s=5"])
    cfg = with_overrides(load_config(args.config), _overrides(args))
    assert cfg.bundle == "/from-file"  # not given as a flag: the file's value stays
    assert cfg.site == "flag-site" and cfg.spool.path == "flag.db" and cfg.once is True
    assert cfg.decision.k == 2 and cfg.mqtt.reconnect_max_s == 5.0
    with pytest.raises(ConfigError, match="unknown key 'decision.kk'"):
        with_overrides(cfg, {"decision.kk": 1})


def test_password_sources_and_secrecy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = with_overrides(EdgeConfig(), {"password": "hunter2"})
    assert "hunter2" not in repr(cfg) and cfg.resolve_password() == "hunter2"
    (tmp_path / "pw").write_text("from-file\n")
    assert with_overrides(EdgeConfig(), {"password_file": str(tmp_path / "pw")}).resolve_password() == "from-file"
    monkeypatch.setenv("EDGE_PW", "from-env")
    assert with_overrides(EdgeConfig(), {"password_env": "EDGE_PW"}).resolve_password() == "from-env"
    with pytest.raises(ConfigError, match="only one of"):
        with_overrides(EdgeConfig(), {"password": "a", "password_env": "EDGE_PW"})
    with pytest.raises(ConfigError, match="cannot be read"):
        with_overrides(EdgeConfig(), {"password_file": str(tmp_path / "nope")}).resolve_password()


def test_broker_urls() -> None:
    assert parse_broker_url("mqtt://h") == parse_broker_url("mqtt://h:1883")
    tls = parse_broker_url("mqtts://broker.local")
    assert tls.tls and tls.port == 8883
    with pytest.raises(ConfigError, match="credentials"):
        parse_broker_url("mqtt://user:pw@h:1883")


def test_example_config_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.bundle and cfg.source and cfg.spool.path.startswith("/var/lib/aiot-edge")


@pytest.mark.parametrize("override, message", [
    ({"input.poll_s": 0}, "input.poll_s must be between"),  # 0 spun a core
    ({"input.poll_s": -1.0}, "input.poll_s must be between"),
    ({"input.settle_s": -1.0}, "input.settle_s must be between"),
    ({"mqtt.keepalive_s": 1_000_000_000}, "mqtt.keepalive_s must be between 1 and 65535"),  # killed paho's thread
    ({"mqtt.keepalive_s": 0}, "mqtt.keepalive_s must be between 1 and 65535"),
    ({"mqtt.reconnect_min_s": 0}, "mqtt.reconnect_min_s"),
    ({"mqtt.reconnect_min_s": 5, "mqtt.reconnect_max_s": 1}, "mqtt.reconnect_max_s"),
])
def test_ranges_are_checked(override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        with_overrides(EdgeConfig(), override)


def test_a_secret_value_is_never_echoed(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text("password: 86753091\n")  # a YAML number, not a string
    with pytest.raises(ConfigError, match="password must be a string") as err:
        load_config(path)
    assert "86753091" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        with_overrides(EdgeConfig(), {"password": ["s3cret-in-a-list"]})
    assert "s3cret" not in str(err.value)


def test_password_on_the_command_line_warns_about_ps(tmp_path: Path, capsys) -> None:
    from aiot_edge.cli import main

    code = main(["run", "--set", "password=hunter2", "--set", "decision.k=0"])  # a config error: stops early
    err = capsys.readouterr().err
    assert code == 2 and "hunter2" not in err
    assert "visible to every user in `ps`" in err and "password_file" in err
