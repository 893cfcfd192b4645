"""Read the first certificate of a PEM file: subject, issuer, validity.

The standard library verifies certificates but has no public parser for a certificate
file (``ssl`` describes only the *peer's* certificate, after a handshake).  ``pilotlog
doctor`` needs to say when a proxy or certificate expires before any connection, so
this walks the few DER fields it needs (RFC 5280 §4.1): a small, bounded reader that
raises :class:`ValueError` on anything it does not expect.
"""

import base64
import calendar
import re

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)
_OID_NAMES = {
    b"\x55\x04\x03": "CN",
    b"\x55\x04\x0a": "O",
    b"\x55\x04\x0b": "OU",
    b"\x55\x04\x06": "C",
    b"\x09\x92\x26\x89\x93\xf2\x2c\x64\x01\x19": "DC",
}


def _element(der: bytes, at: int):
    """(tag, start of contents, end of contents) of the DER element at ``at``."""
    tag, length = der[at], der[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(der[at : at + count], "big")
        at += count
    if at + length > len(der):
        raise ValueError("truncated DER")
    return tag, at, at + length


def _children(der: bytes, start: int, end: int):
    while start < end:
        tag, inner, after = _element(der, start)
        yield tag, inner, after
        start = after


def _name(der: bytes, start: int, end: int) -> str:
    """An X.500 name as ``/DC=org/O=Example/CN=host`` (the grid's usual slash form)."""
    parts = []
    for _, set_start, set_end in _children(der, start, end):  # RelativeDistinguishedName (SET)
        for _, seq_start, seq_end in _children(der, set_start, set_end):  # AttributeTypeAndValue
            (_, oid_start, oid_end), (_, value_start, value_end) = list(_children(der, seq_start, seq_end))[:2]
            label = _OID_NAMES.get(der[oid_start:oid_end])
            if label:
                parts.append("%s=%s" % (label, der[value_start:value_end].decode("utf-8", "replace")))
    return "/" + "/".join(parts)


def _time(der: bytes, tag: int, start: int, end: int) -> float:
    text = der[start:end].decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ: years 50-99 are 19xx
        year = int(text[:2])
        text = ("19" if year >= 50 else "20") + text
    if len(text) != 15 or not text.endswith("Z"):
        raise ValueError("unsupported certificate time %r" % text)
    fields = [int(text[i:j]) for i, j in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14))]
    return float(calendar.timegm(tuple(fields) + (0, 0, 0)))


def first_certificate(path: str) -> dict:
    """``{"subject", "issuer", "not_before", "not_after"}`` (times as epoch seconds) of the
    first certificate in a PEM file — for a grid proxy, the proxy itself."""
    with open(path, "rb") as f:
        match = _PEM.search(f.read(1024 * 1024))
    if not match:
        raise ValueError("no PEM certificate in %s" % path)
    try:
        return parse_der(base64.b64decode(b"".join(match.group(1).split())))
    except ValueError as exc:
        raise ValueError("cannot read the certificate in %s (%s)" % (path, exc)) from None


def parse_der(der: bytes) -> dict:
    """The same fields from one DER-encoded certificate."""
    try:
        _, cert_start, _ = _element(der, 0)
        _, tbs_start, tbs_end = _element(der, cert_start)
        fields = list(_children(der, tbs_start, tbs_end))
        if fields[0][0] == 0xA0:  # explicit version
            fields = fields[1:]
        # serialNumber, signature, issuer, validity, subject
        (_, issuer_start, issuer_end), (_, validity_start, validity_end), (_, subject_start, subject_end) = fields[2:5]
        (nb_tag, nb_start, nb_end), (na_tag, na_start, na_end) = list(_children(der, validity_start, validity_end))
        return {
            "subject": _name(der, subject_start, subject_end),
            "issuer": _name(der, issuer_start, issuer_end),
            "not_before": _time(der, nb_tag, nb_start, nb_end),
            "not_after": _time(der, na_tag, na_start, na_end),
        }
    except (IndexError, ValueError) as exc:
        raise ValueError(str(exc) or "malformed DER") from None
