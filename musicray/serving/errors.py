"""The one error a client can fix: a 4xx whose JSON body names what was wrong.

The apps (``musicray.serving.api``) answer a ``ClientError`` with ``{"error": kind, "detail": message,
...extra}`` and its status; the services raise it for anything a request asks that the served state
cannot answer.
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """A request the client has to change: becomes a 4xx JSON response."""

    def __init__(self, status: int, kind: str, detail: str, **extra: Any):
        super().__init__(detail)
        self.status, self.kind, self.detail, self.extra = status, kind, detail, extra


def unknown_tracks(track_ids: list[str], where: str) -> ClientError:
    return ClientError(404, "unknown_track", f"unknown track id(s) {', '.join(map(repr, track_ids))}: "
                                             f"not in {where}", track_ids=track_ids)
