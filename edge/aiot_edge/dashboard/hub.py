"""Fan-out of live events from the MQTT thread to the pages connected over Server-Sent Events.

The subscriber calls `publish(kind, data)` from paho's network thread; each connected page owns an
`asyncio.Queue` on the web server's loop, and the event is put there with `call_soon_threadsafe`
(an asyncio queue is not thread-safe). A page that does not keep up (its queue is full) is
disconnected rather than slowing the others or growing memory: its browser reconnects by itself
(EventSource does) and starts again from a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

QUEUE_SIZE = 5000  # events buffered per page: a 1,000-alert burst fits with room to spare


class Client:
    """One connected page: its queue of SSE frames, and whether it was dropped for falling behind."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(QUEUE_SIZE)
        self.dropped = False

    def _put(self, frame: str | None) -> None:  # on the loop's thread
        if self.dropped:
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.dropped = True
            while not self.queue.empty():  # the reader sees only the end-of-stream marker next
                self.queue.get_nowait()
            self.queue.put_nowait(None)


def frame(kind: str, data: Any) -> str:
    """One SSE message: `event: kind` and the JSON on a single `data:` line (json.dumps never emits newlines)."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class Hub:
    """Thread-safe publish, per-page queues; counts what it sent and whom it dropped."""

    def __init__(self) -> None:
        self._clients: set[Client] = set()
        self._lock = threading.Lock()
        self.events = 0
        self.slow_clients_dropped = 0

    def connect(self, loop: asyncio.AbstractEventLoop) -> Client:
        client = Client(loop)
        with self._lock:
            self._clients.add(client)
        return client

    def disconnect(self, client: Client) -> None:
        with self._lock:
            self._clients.discard(client)
        if client.dropped:
            self.slow_clients_dropped += 1
            log.warning("a dashboard page fell %d events behind and was disconnected (it reconnects)", QUEUE_SIZE)

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def publish(self, kind: str, data: Any) -> None:
        """Send an event to every connected page (any thread)."""
        text = frame(kind, data)
        with self._lock:
            clients = list(self._clients)
        self.events += 1
        for client in clients:
            try:
                client.loop.call_soon_threadsafe(client._put, text)
            except RuntimeError:  # the loop is closed: the server is shutting down
                pass

    def close(self) -> None:
        """End every page's stream (server shutdown)."""
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            try:
                client.loop.call_soon_threadsafe(client._put, None)
            except RuntimeError:
                pass
