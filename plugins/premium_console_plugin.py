"""Airflow plugin: the Premium operations console, inside the Airflow UI (read-only, Airflow users only).

- The console's pages are under ``/premium/console/`` on the API server (Today, Campaign, Bank API,
  Customer lookup; see :mod:`premium.console.app`).
- A "Premium" entry in the UI's navigation (top level), showing the console in the UI's frame at
  ``/plugin/premium-console``.
- A "Premium day" tab on every DAG run page, showing that run's day (``/premium/console/dag-runs/
  {DAG_ID}/{RUN_ID}`` redirects to the Today page of the run's check date).

The console app itself is served by the ``/premium`` app (:mod:`premium.api_server`, registered by
:mod:`premium_webhooks_plugin`): one mount per prefix, whatever order the plugins load in.

Thin on purpose, like the other plugins here: the plugin manager imports every top-level module of
plugins/ in every Airflow component and registers every AirflowPlugin subclass in its namespace;
import no other plugin class here.
"""

from __future__ import annotations

import base64

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/premium/console"
_ICON_SVG = (
    "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 24 24'><path fill='#0b6e99' "
    "d='M3 3h2v16h16v2H3zm4 10h3v5H7zm5-6h3v11h-3zm5 3h3v8h-3z'/></svg>"
)
ICON = "data:image/svg+xml;base64," + base64.b64encode(_ICON_SVG.encode()).decode()  # a bar chart, no request


class PremiumConsolePlugin(AirflowPlugin):
    name = "premium_console"
    external_views = [
        {
            "name": "Premium",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "premium-console",
            "nav_top_level": True,
            "icon": ICON,
        },
        {
            "name": "Premium day",
            "href": URL_PREFIX + "/dag-runs/{DAG_ID}/{RUN_ID}",
            "destination": "dag_run",
            "url_route": "premium-day",
            "icon": ICON,
        },
    ]
