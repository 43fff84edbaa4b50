"""Observation: run reports (text, HTML), the live view of a federation over MQTT, the dashboard."""
