"""Airflow plugin: Premium's app on the Airflow API server, at ``/premium`` (:mod:`premium.api_server`).

It serves the SMS delivery callbacks (§3.5) and the operations console (``/premium/console/``,
Airflow users only; its UI entries are :mod:`premium_console_plugin`). Each carrier posts to its own route,
``POST /premium/api/webhooks/sms-delivery/primary`` or ``…/secondary`` (``<callback_url>/<carrier>``,
``callback_url`` being the SMS setting). The routes carry no Airflow authentication: the carrier
has no Airflow credentials, and the Standard Webhooks signature, with that carrier's own secrets,
is checked instead (see :mod:`premium.webhooks.verify`).

This file stays thin: the plugin manager imports every top-level module of plugins/ in every
Airflow component (``premium/`` itself is listed in plugins/.airflowignore), and registers every
AirflowPlugin subclass found in its namespace — import no other plugin class here.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from premium.api_server import app as premium_app


class PremiumWebhooksPlugin(AirflowPlugin):
    name = "premium_webhooks"
    fastapi_apps = [{"app": premium_app, "url_prefix": "/premium", "name": "premium"}]
