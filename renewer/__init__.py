"""renewer: keeps the TLS certificates of Apache APISIX and API7 gateways renewed via ACME."""

__version__ = "0.1.0"
