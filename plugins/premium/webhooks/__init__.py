"""SMS delivery callbacks (integration-architecture §3.5) received by the Airflow API server.

- :mod:`premium.webhooks.verify`: Standard Webhooks signature verification, payload parsing and
  each carrier's webhook secrets (from Airflow connections, cached briefly);
- :mod:`premium.webhooks.app`: the FastAPI app mounted by ``plugins/premium_webhooks_plugin.py``
  at ``/premium`` (one route per carrier, ``POST /premium/api/webhooks/sms-delivery/{carrier}``);
  the state change itself is :func:`premium.notifications.state.record_webhook`.
"""
