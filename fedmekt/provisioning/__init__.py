"""Broker provisioning for a secured deployment (``fedmekt provision``).

The operator's folder keeps the CA key, the registry of logins and every login's
credentials; the broker's folder gets only what mosquitto serves: its certificate and
key, the CA certificate, the password file (PBKDF2 hashes) and the topic ACL rendered
from the registry.
"""
