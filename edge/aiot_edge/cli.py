"""`aiot-edge` command line: `run` (MQTT alert daemon), `score` (offline, JSON lines), `dashboard`. Thin: parses, calls.

    aiot-edge run   [--config edge.yaml] [--bundle B] [--source file:PATH|folder:DIR|stdin|alsa:DEV]
                    [--machine M --machine-id ID] [--broker mqtt://H:P|mqtts://H:P|embedded]
                    [--site S] [--device D] [--spool FILE] [--once] [--set key=value ...]
    aiot-edge score --bundle BUNDLE [--machine M --machine-id ID] FILE.wav...
    aiot-edge dashboard --broker mqtt://H:P [--site S] [--listen 127.0.0.1:8080] [--db FILE]

Flags override the config file; `--set key.sub=value` overrides any config key (the value is read
as YAML: `--set mqtt.reconnect_min_s=0.5`). Exit codes of `run`: 0 done / stopped, 1 the source
failed, 2 cannot start (config, bundle, source, spool, broker), 3 `--once` gave up with alerts left
in the spool. `score`: 0, 1 if any file failed (each error on stderr), 2 if the bundle is unusable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .bundle import BundleError
from .config import ConfigError, load_config, with_overrides
from .logs import escape_controls, setup_logging

log = logging.getLogger("aiot_edge.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aiot-edge", description="Torch-free anomaly scoring and MQTT alerts at the edge.")
    p.add_argument("--version", action="version", version=f"aiot-edge {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="score a live source and publish alerts over MQTT")
    run.add_argument("--config", help="YAML (or TOML on Python 3.11+) daemon config; flags override it")
    run.add_argument("--bundle", help="bundle folder (model.onnx + bundle.json)")
    run.add_argument("--source", help="file:PATH | folder:DIR | stdin | alsa:DEVICE")
    run.add_argument("--machine", help="machine type served by the bundle (e.g. fan)")
    run.add_argument("--machine-id", help="machine ID (e.g. id_00)")
    run.add_argument("--broker", help="mqtt://HOST:PORT | mqtts://HOST:PORT | embedded")
    run.add_argument("--site", help="site name: topics are aiot/<site>/<device>/...")
    run.add_argument("--device", help="device name (default: the host name)")
    run.add_argument("--spool", help="SQLite file holding unsent alerts")
    run.add_argument("--once", action="store_true", default=None,
                     help="stop when the source is exhausted and the spool is empty")
    run.add_argument("--once-timeout", type=float, help="seconds --once waits for the spool to drain (default 30)")
    run.add_argument("--input-rate", type=int, help="sample rate of stdin PCM / microphone (default: the bundle's)")
    run.add_argument("--channels", type=int, help="channels of stdin PCM / microphone (averaged to mono)")
    run.add_argument("--pcm-format", help="stdin PCM format: s16le (default), s32le, f32le")
    run.add_argument("--username", help="MQTT user name")
    run.add_argument("--password-file", help="file holding the MQTT password (never put it on the command line)")
    run.add_argument("--ca", help="CA certificate for mqtts://")
    run.add_argument("--status-file", help="write health counters as JSON here")
    run.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    run.add_argument("--log-format", choices=["kv", "json"], help="key=value lines (default) or JSON lines")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override any config key, e.g. --set decision.k=2 --set mqtt.protocol=5")

    score = sub.add_parser("score", help="score WAV files offline: one JSON line per window on stdout")
    score.add_argument("--bundle", required=True, help="bundle folder")
    score.add_argument("--machine", help="machine type (default: read from a DCASE path)")
    score.add_argument("--machine-id", help="machine ID (default: read from a DCASE path)")
    score.add_argument("--providers", help="comma-separated onnxruntime providers, e.g. cuda,cpu")
    score.add_argument("--log-level", default="WARNING")
    score.add_argument("files", nargs="+", help="audio files")

    dash = sub.add_parser("dashboard", help="live web page of devices, scores and alerts (extra: edge[dashboard])")
    dash.add_argument("--broker", default="mqtt://localhost:1883", help="mqtt://HOST:PORT | mqtts://HOST:PORT")
    dash.add_argument("--site", default="+", help="the site to show (default: every site)")
    dash.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT of the page (port 0: a free one)")
    dash.add_argument("--db", default="aiot-dashboard.db", help="SQLite file keeping alerts, acks and scores")
    dash.add_argument("--token-file", help="file holding the token a browser must give (required off loopback); "
                      "or set AIOT_DASHBOARD_TOKEN")
    dash.add_argument("--username", help="MQTT user name")
    dash.add_argument("--password-file", help="file holding the MQTT password")
    dash.add_argument("--ca", help="CA certificate for mqtts://")
    dash.add_argument("--max-alerts", type=int, default=10_000, help="alerts kept in the database (oldest go)")
    dash.add_argument("--log-level", default="INFO")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    flags = {
        "bundle": args.bundle, "source": args.source, "machine": args.machine, "machine_id": args.machine_id,
        "broker": args.broker, "site": args.site, "device": args.device, "spool.path": args.spool,
        "once": args.once, "once_timeout_s": args.once_timeout, "input.rate": args.input_rate,
        "input.channels": args.channels, "input.format": args.pcm_format, "username": args.username,
        "password_file": args.password_file, "tls.ca": args.ca, "status_file": args.status_file,
        "log_level": args.log_level, "log_format": args.log_format,
    }
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            flags[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: cannot read the value {value!r} ({err})") from err
    return flags


def _warn_password_flag(given: bool) -> None:
    if given:
        log.warning("--set password=... is visible to every user in `ps` and in shell history; "
                    "use password_file (mode 0640) or password_env instead")


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import Daemon  # imported here so `aiot-edge score` does not load paho

    on_command_line = any(item.partition("=")[0].strip() == "password" for item in args.set)
    try:
        cfg = with_overrides(load_config(args.config), _overrides(args))
    except ConfigError as err:
        setup_logging("INFO")
        _warn_password_flag(on_command_line)
        log.error("config error: %s", err)
        return 2
    setup_logging(cfg.log_level, cfg.log_format)
    _warn_password_flag(on_command_line)
    return int(Daemon(cfg).run())


def cmd_score(args: argparse.Namespace) -> int:
    from .runtime import score_files

    setup_logging(args.log_level)
    failures: list[tuple[str, str]] = []

    def on_error(path: str, err: ValueError) -> None:
        failures.append((path, str(err)))
        print(f"error: {escape_controls(str(err))}", file=sys.stderr)  # a file name may hold a newline

    providers = [p.strip() for p in args.providers.split(",")] if args.providers else None
    windows = failed_windows = 0
    try:
        for row in score_files(args.bundle, args.files, args.machine, args.machine_id, providers, on_error=on_error):
            sys.stdout.write(json.dumps(row, allow_nan=False) + "\n")
            windows += 1
            failed_windows += "error" in row  # a non-finite score: null in the JSON
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0  # `aiot-edge score ... | head`
    sys.stdout.flush()
    n_ok = len(args.files) - len(failures)
    print(f"scored {windows} window(s) from {n_ok} file(s); {len(failures)} file(s) failed; "
          f"{failed_windows} window(s) failed (non-finite score)", file=sys.stderr)
    return 1 if failures or failed_windows else 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    try:
        from .dashboard import Dashboard, DashboardConfig
    except ImportError as err:
        log.error("the dashboard needs its extra: pip install 'aiot-w2v2-edge[dashboard]' (%s)", err)
        return 2

    def secret(path: str | None, env: str | None = None) -> str | None:
        if path:
            return Path(path).read_text(encoding="utf-8").strip()
        return os.environ.get(env) if env else None

    try:
        cfg = DashboardConfig(broker=args.broker, site=args.site, listen=args.listen, db=args.db,
                              token=secret(args.token_file, "AIOT_DASHBOARD_TOKEN"), username=args.username,
                              password=secret(args.password_file), ca=args.ca, max_alerts=args.max_alerts)
        return Dashboard(cfg).run()
    except (ConfigError, OSError) as err:
        log.error("dashboard cannot start: %s", err)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "dashboard":
        return cmd_dashboard(args)
    return cmd_score(args)


if __name__ == "__main__":
    sys.exit(main())
