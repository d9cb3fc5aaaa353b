"""The one app Premium mounts on the Airflow API server, at ``/premium``.

- ``/premium/api/webhooks/sms-delivery/{primary|secondary}``: the carriers' signed delivery
  callbacks (:mod:`premium.webhooks.app`; no Airflow authentication, the signature is checked);
- ``/premium/console/``: the operations console (:mod:`premium.console.app`; Airflow users only).

One mount for the whole prefix: Starlette hands a request to the first mount whose prefix matches,
and the plugin manager registers plugins in directory order, so two plugins mounting ``/premium``
and ``/premium/console`` would depend on that order. The API server enters the lifespan of its
top-level mounts only: this app's lifespan enters both sub-apps' (the webhook app's audit writer).
"""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from premium.console.app import app as console_app
from premium.webhooks.app import app as webhooks_app

SUB_APPS = (("/console", console_app), ("", webhooks_app))


@asynccontextmanager
async def lifespan(_app: FastAPI):
    async with AsyncExitStack() as stack:
        for _, sub in SUB_APPS:
            await stack.enter_async_context(sub.router.lifespan_context(sub))
        yield


app = FastAPI(title="Premium notifications", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
for _prefix, _sub in SUB_APPS:
    app.mount(_prefix or "/", _sub)
