"""The least a scan can do: fetch every Admin API page and parse each certificate's PEM and
SANs with ``cryptography``. ``renewer scan`` is measured against this floor.

``python -m bench.floor_scan --admin-url URL`` (admin key in ``$APISIX_ADMIN_KEY``) prints
``{"objects": N, "certificates": M}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import httpx
from cryptography import x509

PAGE_SIZE = 500


def pages(client: httpx.Client) -> Iterator[list[dict[str, Any]]]:
    """Pages of SSL objects until a short one, as any Admin API client must read them."""
    page = 1
    while True:
        body = client.get("/apisix/admin/ssls", params={"page": page, "page_size": PAGE_SIZE})
        items = body.raise_for_status().json().get("list") or []
        yield items
        if len(items) < PAGE_SIZE:
            return
        page += 1


def certificate_pems(value: dict[str, Any]) -> Iterator[str]:
    for pem in [value.get("cert"), *(value.get("certs") or [])]:
        if isinstance(pem, str) and pem.startswith("-----BEGIN"):
            yield pem


def leaf_sans(pem: str) -> list[str]:
    """Every certificate of the chain parsed; the leaf's DNS SANs returned."""
    leaf = x509.load_pem_x509_certificates(pem.encode())[0]
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.DNSName)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_scan", description=__doc__)
    parser.add_argument("--admin-url", required=True)
    args = parser.parse_args(argv)
    objects = certificates = 0
    headers = {"X-API-KEY": os.environ.get("APISIX_ADMIN_KEY", "")}
    with httpx.Client(base_url=args.admin_url, headers=headers, timeout=60) as client:
        for page in pages(client):
            for item in page:
                objects += 1
                for pem in certificate_pems(item["value"]):
                    try:
                        leaf_sans(pem)
                    except ValueError:
                        continue  # unparsable: counted as an object, not a certificate
                    certificates += 1
    print(json.dumps({"objects": objects, "certificates": certificates}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
