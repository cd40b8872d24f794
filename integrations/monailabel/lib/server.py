"""Keep the MONAI Label server answering while a model infers."""

from __future__ import annotations

import functools
import logging
import sys

logger = logging.getLogger(__name__)


def infer_off_the_event_loop() -> None:
    """Serve ``POST /infer/{model}`` from a worker thread instead of the server's event loop.

    MONAI Label 0.8.5 declares that endpoint ``async`` and runs the whole inference inside it, which blocks the
    event loop: while one CT is being segmented (minutes on a CPU) the server answers nothing else, not even
    ``/info/``, and clients time out. The same endpoint function, run through Starlette's thread pool and registered
    ahead of the original route, leaves the loop free. Does nothing outside the server process (training runs in a
    process of its own and has no routes).
    """
    server = sys.modules.get("monailabel.app")
    if server is None:
        return
    from monailabel.config import settings
    from monailabel.endpoints import infer as endpoint
    from starlette.concurrency import run_in_threadpool

    @functools.wraps(endpoint.api_run_inference)  # FastAPI reads the parameters of the wrapped endpoint
    async def api_run_inference(**kwargs):
        kwargs.pop("user", None)  # checked by the endpoint's dependency; run_inference takes no user
        return await run_in_threadpool(endpoint.run_inference, **kwargs)

    router = server.app.router
    path = f"{settings.MONAI_LABEL_API_STR}/infer/{{model}}"
    router.add_api_route(path, api_run_inference, methods=["POST"], summary="Run Inference for supported model")
    router.routes.insert(0, router.routes.pop())  # the first matching route serves a request
    logger.info(f"POST {path} runs in a worker thread; the server keeps answering meanwhile")
