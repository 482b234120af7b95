"""`aiot-edge dashboard`: a live page of a fleet's devices, scores and alerts, built on the MQTT contract alone.

payloads.py parses and checks what arrives, store.py keeps it (SQLite), subscriber.py is the MQTT
side, hub.py fans events out to the pages, server.py is the web side (Starlette, Server-Sent
Events), runner.py wires them up; static/ holds the page (no CDN: it works offline). Needs the
`dashboard` extra (starlette, uvicorn); never imports torch.
"""

from .runner import Dashboard, DashboardConfig

__all__ = ["Dashboard", "DashboardConfig"]
