"""Deployment assets: the secured mosquitto configuration and device provisioning."""
