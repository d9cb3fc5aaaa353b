"""The Premium operations console: read-only pages on the Airflow API server (see :mod:`premium.console.app`).

``queries`` reads each page's figures (include/sql/console_*.sql), ``charts`` draws them as SVG,
``app`` serves them to Airflow users; plugins/premium_console_plugin.py registers it.
"""
