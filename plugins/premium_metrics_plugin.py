"""Airflow plugin: the integration health figures for ops tools (§6.1) on the Airflow API server.

Mounts :data:`premium.metrics_app.app` at ``/premium-metrics``, so Prometheus (or any tool that
reads its text format) scrapes ``GET /premium-metrics/metrics``: the latest figures that the
``premium_monitoring`` DAG recorded in ``integration_metrics``. Authenticated: the static scrape
token of the ``premium_metrics_scrape`` connection, or an Airflow user (see
:mod:`premium.metrics_app`).

Thin on purpose, like premium_webhooks_plugin.py: the plugin manager imports every top-level
module of plugins/ in every Airflow component and registers every AirflowPlugin subclass in its
namespace; import no other plugin class here.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from premium.metrics_app import app as metrics_app


class PremiumMetricsPlugin(AirflowPlugin):
    name = "premium_metrics"
    fastapi_apps = [{"app": metrics_app, "url_prefix": "/premium-metrics", "name": "premium-metrics"}]
