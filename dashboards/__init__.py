"""Grafana dashboards and alert rules as code, and the provisioning generated from them.

``flash-payouts dashboards generate`` writes everything under ``provisioning/``: the dashboards
(``*.dashboard.py``, grafanalib), the alert rules (``alerts.py``, rendered for Grafana and for
Prometheus), the datasources and the Prometheus and Alertmanager configuration.
"""
