"""What a scan reads from a certificate's DER without cryptography building objects.

A scan reads tens of thousands of certificates. cryptography turns every name, extension
and key it is asked about into Python objects, which costs several times the parse
itself. The few fields the inventory reports (names, SANs, serial, the key's type) are read
here from the bytes instead, only after cryptography accepted the certificate. Every reader
answers None for anything outside the common shapes, and the caller then asks
cryptography, so the answers are cryptography's. One exception: a key is named by what its
SubjectPublicKeyInfo declares, even where OpenSSL would refuse the key itself.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import NamedTuple

from cryptography import x509
from cryptography.x509.oid import NameOID


class NotDer(ValueError):
    """Bytes that are not the DER a reader expects; the caller falls back to cryptography."""


def element(der: bytes, at: int) -> tuple[int, int]:
    """(content start, end) of the DER element whose tag is at ``at``, checked strictly:
    for bytes cryptography has not parsed (the inside of an extension or a key)."""
    try:
        length = der[at + 1]
        if length < 0x80:
            start, end = at + 2, at + 2 + length
        else:
            start = at + 2 + (length & 0x7F)
            end = start + int.from_bytes(der[at + 2 : start])
            if length == 0x80 or der[at + 2] == 0 or end - start < 0x80:
                raise NotDer("not a minimal DER length")
    except IndexError:
        raise NotDer("truncated") from None
    if end > len(der):
        raise NotDer("truncated")
    return start, end


# The structure around the fields read below (certificate, names, the extension list) is
# DER cryptography has already parsed, so these two walk it without checks.


def _content_start(der: bytes, at: int) -> int:
    length = der[at + 1]
    return at + 2 if length < 0x80 else at + 2 + (length & 0x7F)


def _children(der: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """(content start, end) of each consecutive element in ``der[start:end]``; an element
    starts where the one before it ends."""
    elements = []
    at = start
    while at < end:
        length = der[at + 1]
        if length < 0x80:
            content = at + 2
            at = content + length
        else:
            content = at + 2 + (length & 0x7F)
            at = content + int.from_bytes(der[at + 2 : content])
        elements.append((content, at))
    return elements


class SanValues(NamedTuple):
    """The DNS names and IP addresses of a SAN extension, as cryptography reads them."""

    dns: list[str]
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address]


class TbsParts(NamedTuple):
    """The raw parts of a certificate the inventory reads."""

    serial: str | None  # lower-case hex as ``format(serial, "x")``; None if negative
    issuer: bytes  # DER of the issuer Name
    subject: bytes  # DER of the subject Name
    spki: bytes  # DER of the SubjectPublicKeyInfo
    san_values: SanValues | None  # None: ask cryptography


def tbs_parts(der: bytes) -> TbsParts:
    """Split a certificate cryptography has already accepted."""
    tbs_start, tbs_end = element(der, _content_start(der, 0))
    fields = _children(der, tbs_start, tbs_end)
    if der[tbs_start] == 0xA0:  # [0] EXPLICIT version
        del fields[0]
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, [1], [2], [3]
    (serial_start, serial_end), _, (_, issuer_end), _, (_, subject_end), (_, spki_end) = fields[:6]
    san_values: SanValues | None = SanValues([], [])
    if len(fields) > 6 and der[fields[-2][1]] == 0xA3:
        try:
            san_values = _san_values(der, *element(der, fields[-1][0]))
        except NotDer:
            san_values = None
    serial = der[serial_start:serial_end]
    return TbsParts(
        (serial.hex().lstrip("0") or "0") if serial[0] < 0x80 else None,
        der[fields[1][1] : issuer_end],
        der[fields[3][1] : subject_end],
        der[subject_end:spki_end],
        san_values,
    )


_SAN = bytes.fromhex("0603551d11")  # OBJECT IDENTIFIER 2.5.29.17
_DNS_NAME, _IP_ADDRESS = 0x82, 0x87  # [2] IA5String, [7] OCTET STRING


def _san_values(der: bytes, start: int, end: int) -> SanValues | None:
    """The SANs in the extension list ``der[start:end]``; None for a SAN extension holding
    other kinds of names, or appearing twice (cryptography refuses that)."""
    extensions = _children(der, start, end)
    sans = [(content, stop) for content, stop in extensions if der.startswith(_SAN, content)]
    if not sans:
        return SanValues([], [])
    if len(sans) > 1:
        return None
    [(at, extension_end)] = sans
    at += len(_SAN)
    if der[at] == 0x01:  # critical
        at = element(der, at)[1]
    value_start, value_end = element(der, at)
    if der[at] != 0x04 or value_end != extension_end or der[value_start] != 0x30:
        return None
    names_start, names_end = element(der, value_start)
    if names_end != value_end:
        return None
    values = SanValues([], [])
    at = names_start
    while at < names_end:
        tag = der[at]
        start, at = element(der, at)
        value = der[start:at]
        if tag == _DNS_NAME and value.isascii():
            values.dns.append(value.decode())
        elif tag == _IP_ADDRESS and len(value) in (4, 16):
            values.ips.append(ipaddress.ip_address(value))
        else:
            return None
    return values


def _oid_content(oid: x509.ObjectIdentifier) -> bytes:
    """The DER content of ``oid``, as cryptography itself encodes it."""
    name = x509.Name([x509.NameAttribute(oid, "xx")]).public_bytes()
    attribute = element(name, element(name, element(name, 0)[0])[0])[0]
    start, end = element(name, attribute)
    return name[start:end]


# The short names cryptography's RFC 4514 strings use, keyed by the OID's DER content.
_SHORT_NAMES = {
    _oid_content(oid): x509.NameAttribute(oid, "xx").rfc4514_string().split("=", 1)[0]
    for oid in (
        NameOID.COMMON_NAME,
        NameOID.LOCALITY_NAME,
        NameOID.STATE_OR_PROVINCE_NAME,
        NameOID.ORGANIZATION_NAME,
        NameOID.ORGANIZATIONAL_UNIT_NAME,
        NameOID.COUNTRY_NAME,
        NameOID.STREET_ADDRESS,
        NameOID.DOMAIN_COMPONENT,
        NameOID.USER_ID,
    )
}
_TEXT_TAGS = frozenset({0x0C, 0x13, 0x16})  # UTF8String, PrintableString, IA5String
# Values RFC 4514 escapes (or that cryptography versions escape differently): left to it.
_NEEDS_ESCAPE = re.compile(r'[\\"+,;<>\x00]|^[# ]| $|^$')


def name_string(name: bytes) -> str | None:
    """``Name.rfc4514_string()`` of a DER name, for names made of single attributes with a
    short name and a text value that needs no escaping; None for any other name."""
    parts: list[str] = []
    for rdn_start, rdn_end in _children(name, _content_start(name, 0), len(name)):
        attributes = _children(name, rdn_start, rdn_end)
        if len(attributes) != 1:
            return None  # a multi-valued RDN
        oid_at = attributes[0][0]
        value_at = oid_at + 2 + name[oid_at + 1]
        key = _SHORT_NAMES.get(name[oid_at + 2 : value_at])
        if key is None or name[value_at] not in _TEXT_TAGS:
            return None
        try:
            value = name[_content_start(name, value_at) : rdn_end].decode()
        except UnicodeDecodeError:
            return None
        if _NEEDS_ESCAPE.search(value):
            return None
        parts.append(f"{key}={value}")
    return ",".join(reversed(parts))


issuer_string = functools.lru_cache(maxsize=256)(name_string)
"""``name_string`` for issuers: few distinct CAs sign a gateway's certificates."""

_RSA_ENCRYPTION = bytes.fromhex("2a864886f70d010101")
_EC_PUBLIC_KEY = bytes.fromhex("2a8648ce3d0201")
_EC_CURVES = {
    bytes.fromhex("2a8648ce3d030107"): "EC-P256",
    bytes.fromhex("2b81040022"): "EC-P384",
    bytes.fromhex("2b81040023"): "EC-P521",
}


def key_type(spki: bytes) -> str | None:
    """``EC-P256``, ``RSA-2048``… as declared by a SubjectPublicKeyInfo, without building
    the key; None for other algorithms or an RSA key that is not plain DER."""
    try:
        algorithm_start, algorithm_end = element(spki, element(spki, 0)[0])
        oid_start, oid_end = element(spki, algorithm_start)
        algorithm = spki[oid_start:oid_end]
        if algorithm == _EC_PUBLIC_KEY:
            if oid_end == algorithm_end or spki[oid_end] != 0x06:
                return None  # explicit curve parameters
            curve_start, curve_end = element(spki, oid_end)
            return _EC_CURVES.get(spki[curve_start:curve_end])
        if algorithm != _RSA_ENCRYPTION or spki[algorithm_end] != 0x03:
            return None
        bits_start, bits_end = element(spki, algorithm_end)
        key_at = bits_start + 1  # after the unused-bits octet
        key_start, key_end = element(spki, key_at)
        modulus_start, modulus_end = element(spki, key_start)
        exponent_start, exponent_end = element(spki, modulus_end)
    except NotDer:
        return None
    modulus = spki[modulus_start:modulus_end]
    if (
        spki[bits_start] != 0
        or spki[key_at] != 0x30
        or key_end != bits_end
        or spki[key_start] != 0x02
        or spki[modulus_end] != 0x02
        or exponent_end != key_end
        or exponent_start == exponent_end
        or not modulus
        or modulus[0] & 0x80  # negative
        or (len(modulus) > 1 and modulus[0] == 0 and not modulus[1] & 0x80)  # not minimal
    ):
        return None
    return f"RSA-{int.from_bytes(modulus).bit_length()}"
