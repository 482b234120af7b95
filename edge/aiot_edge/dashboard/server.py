"""The dashboard's web side: one page, its static assets, a JSON API and a Server-Sent Events stream (Starlette).

    GET  /                the page (static/index.html; app.js and app.css under /static/)
    GET  /api/state       devices, the last hour of scores per device, the newest alerts, counters
    GET  /api/alerts      the newest alerts (?limit=N, at most 10,000), newest first
    GET  /api/health      counters: messages in per kind, dropped per reason, duplicates, pages connected
    GET  /api/events      SSE: a `snapshot` (as /api/state), then `device`, `score`, `alert`, `ack`, `broker`
    POST /api/ack         {"event_id": ...} -> the stored ack {event_id, ts, by}; also published over MQTT

The page is served with a Content-Security-Policy that allows only this origin's own scripts and
styles (no inline script), so even a string that slipped past the page's escaping could not run.
With a token, every request needs it: `Authorization: Bearer TOKEN`, or HTTP basic auth with the
token as password (what a browser prompts for; the user name is recorded as the ack's `by`).
A POST must be JSON and, when the browser sends an Origin, come from this page's origin: another
site open in the operator's browser cannot ack alerts through it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .hub import Hub, frame
from .store import Store
from .subscriber import Subscriber

KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
SNAPSHOT_ALERTS = 500
_STATIC = {"app.js": "text/javascript", "app.css": "text/css", "favicon.svg": "image/svg+xml"}
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def _asset(name: str) -> bytes:
    return resources.files("aiot_edge.dashboard").joinpath("static", name).read_bytes()


class Guard:
    """ASGI middleware: the token check and the security headers, on every response (streams included)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        user = self._user(scope)
        if user is None:
            response = Response("authentication required\n", 401, {"WWW-Authenticate": 'Basic realm="aiot dashboard"'})
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["user"] = user

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in _HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _user(self, scope: dict[str, Any]) -> str | None:
        """'' when no token is configured, the user name (or 'token') when the token matches, else None."""
        if self.token is None:
            return ""
        auth = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode()):
            return "token"
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            if hmac.compare_digest(password.encode(), self.token.encode()):
                return user[:64] or "basic"
        return None


def build_app(store: Store, hub: Hub, subscriber: Subscriber, *, operator: str, token: str | None = None) -> ASGIApp:
    """The ASGI app: routes over `store` (reads), `hub` (live events) and `subscriber` (acks, counters)."""

    def state() -> dict[str, Any]:
        return {"now": time.time(), "history_s": store.history_s, "devices": store.devices(),
                "series": store.series(), "alerts": store.alerts(SNAPSHOT_ALERTS), "counters": health_data()}

    def health_data() -> dict[str, Any]:
        return {**subscriber.counters(), "alerts_stored": store.count_alerts(), "pages": hub.clients,
                "events_sent": hub.events, "slow_pages_dropped": hub.slow_clients_dropped}

    async def index(request: Request) -> Response:
        return Response(_asset("index.html"), media_type="text/html; charset=utf-8")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return Response("not found\n", 404)
        return Response(_asset(name), media_type=_STATIC[name] + "; charset=utf-8")

    async def api_state(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(state))

    async def api_alerts(request: Request) -> Response:
        try:
            limit = min(max(int(request.query_params.get("limit", "500")), 1), 10_000)
        except ValueError:
            return JSONResponse({"error": "limit must be an integer"}, 400)
        return JSONResponse(await run_in_threadpool(store.alerts, limit))

    async def api_health(request: Request) -> Response:
        return JSONResponse(health_data())

    async def api_events(request: Request) -> Response:
        client = hub.connect(asyncio.get_running_loop())

        async def stream() -> Any:
            try:
                # registered before the snapshot is read: nothing falls between the two; the page
                # ignores what it already has (alerts by event_id, scores by time)
                # read in a worker thread: an hour of 50 devices' scores must not hold up other pages' events
                yield frame("snapshot", await run_in_threadpool(state))
                while True:
                    try:
                        item = await asyncio.wait_for(client.queue.get(), KEEPALIVE_S)
                    except asyncio.TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    if item is None:
                        return
                    yield item
            finally:
                hub.disconnect(client)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})

    async def api_ack(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "send JSON"}, 415)
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            return JSONResponse({"error": "cross-origin request refused"}, 403)
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return JSONResponse({"error": "body is not JSON"}, 400)
        event_id = body.get("event_id") if isinstance(body, dict) else None
        if not isinstance(event_id, str) or not event_id or len(event_id) > 128:
            return JSONResponse({"error": "event_id (a string) is required"}, 400)
        user = request.scope.get("state", {}).get("user") or ""
        by = operator if user in ("", "token") else f"{user}@{operator}"
        ack = subscriber.acknowledge(event_id, by)
        if ack is None:
            return JSONResponse({"error": f"unknown event_id {event_id!r}"}, 404)
        return JSONResponse(ack)

    app = Starlette(routes=[
        Route("/", index), Route("/static/{name}", static), Route("/api/state", api_state),
        Route("/api/alerts", api_alerts), Route("/api/health", api_health), Route("/api/events", api_events),
        Route("/api/ack", api_ack, methods=["POST"]),
    ])
    return Guard(app, token)
