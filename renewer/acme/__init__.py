"""The ACME adapter: the only code that speaks RFC 8555 and RFC 9773 (ARI)."""

from renewer.acme.ari import cert_id
from renewer.acme.client import Account, AcmeService, AcmeTimeout

__all__ = ["Account", "AcmeService", "AcmeTimeout", "cert_id"]
