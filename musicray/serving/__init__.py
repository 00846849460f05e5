"""The serving endpoints without Ray: served state that follows LATEST, the services, the two FastAPI apps.

    follower.py   ``Follower``: the served state, swapped whole when a LATEST pointer moves
    recommend.py  the recommend state, request checks, batched answers, similar tracks, ``RecommendService``
    generate.py   the generate state and request, ``GenerateService``
    api.py        the FastAPI apps (``recommend_api``, ``generate_api``), error responses, health routes
    errors.py     ``ClientError``: a 4xx the client can fix

``ray_jobs/serve.py`` wraps the apps in Ray Serve deployments; what callers use is named here.
"""

from musicray.serving.api import VERSION, free_port, generate_api, recommend_api
from musicray.serving.errors import ClientError
from musicray.serving.follower import DEFAULT_POLL_SECONDS, Follower
from musicray.serving.generate import MAX_GENERATE_SECONDS, MAX_UPLOAD_BYTES, GenerateRequest, GenerateService
from musicray.serving.recommend import (RecommendRequest, RecommendService, load_recommend_state, recommend_batch,
                                        snapshot_pointer)

__all__ = ["VERSION", "ClientError", "DEFAULT_POLL_SECONDS", "Follower", "GenerateRequest", "GenerateService",
           "MAX_GENERATE_SECONDS", "MAX_UPLOAD_BYTES", "RecommendRequest", "RecommendService", "free_port",
           "generate_api", "load_recommend_state", "recommend_api", "recommend_batch", "snapshot_pointer"]
