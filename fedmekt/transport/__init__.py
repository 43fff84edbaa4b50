"""Transport: the MQTT link (paho-mqtt), the bounded inbox, and the embedded broker."""
