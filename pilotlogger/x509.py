"""Read certificates: subject, issuer, validity, and whether one is a grid proxy.

The standard library verifies certificates but has no public parser for a certificate
file (``ssl`` describes only the *peer's* certificate, after a handshake), nor does it
say whether a certificate is an RFC 3820 proxy.  ``pilotlog doctor`` needs to say when a
proxy or certificate expires before any connection, and ``pilotlog serve`` needs the
owner of a proxy a client presented, so this walks the few DER fields they need (RFC 5280
§4.1, RFC 3820 §3.8): a small, bounded reader that raises :class:`ValueError` on anything
it does not expect.
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
PROXY_CERT_INFO = "1.3.6.1.5.5.7.1.14"  # RFC 3820 proxyCertInfo: the mark of a proxy certificate
#: Proxy policy languages that hand the issuer's identity on to the proxy: RFC 3820's
#: id-ppl-inheritAll, and Globus's limited proxy (what grid-proxy-init -limited and DIRAC make;
#: DIRAC's LIMITED_PROXY_OID).  id-ppl-independent says the proxy is *not* its issuer, and a
#: language we do not know grants what we cannot tell: neither carries an owner.
DELEGATING_POLICIES = {"1.3.6.1.5.5.7.21.1": "inheritAll", "1.3.6.1.4.1.3536.1.1.1.9": "limited"}


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


def _attributes(der: bytes, start: int, end: int):
    """(label, value) of each attribute of an X.500 name we have a label for, in order."""
    for _, set_start, set_end in _children(der, start, end):  # RelativeDistinguishedName (SET)
        for _, seq_start, seq_end in _children(der, set_start, set_end):  # AttributeTypeAndValue
            (_, oid_start, oid_end), (tag, value_start, value_end) = list(_children(der, seq_start, seq_end))[:2]
            label = _OID_NAMES.get(der[oid_start:oid_end])
            if label:
                codec = "utf-16-be" if tag == 0x1E else "utf-8"  # BMPString, else UTF8/Printable/IA5
                yield label, der[value_start:value_end].decode(codec, "replace")


def _name(der: bytes, start: int, end: int) -> str:
    """An X.500 name as ``/DC=org/O=Example/CN=host`` (the grid's usual slash form)."""
    return "/" + "/".join("%s=%s" % pair for pair in _attributes(der, start, end))


def _oid(der: bytes, start: int, end: int) -> str:
    """An OBJECT IDENTIFIER's contents in dotted form."""
    if start >= end:
        raise ValueError("empty OID")
    arcs, value = [], 0
    for byte in der[start:end]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in [first, arcs[0] - 40 * first] + arcs[1:])


def _proxy_policy(der: bytes, fields) -> "str | None":
    """The policy language of the proxyCertInfo extension (RFC 3820 §3.8), None when there is none.

    ``fields``: the TBSCertificate's elements after the subject (key, optional unique ids, [3] extensions).
    """
    for tag, start, end in fields:
        if tag != 0xA3:  # [3] EXPLICIT Extensions
            continue
        (_, seq_start, seq_end), *_ = _children(der, start, end)
        for _, ext_start, ext_end in _children(der, seq_start, seq_end):  # Extension: id, [critical], value
            parts = list(_children(der, ext_start, ext_end))
            if _oid(der, parts[0][1], parts[0][2]) != PROXY_CERT_INFO:
                continue
            _, value_start, value_end = parts[-1]  # OCTET STRING holding ProxyCertInfo
            _, info_start, info_end = _element(der, value_start)
            policy = list(_children(der, info_start, info_end))[-1]  # [pCPathLenConstraint], proxyPolicy
            _, language_start, language_end = next(_children(der, policy[1], policy[2]))
            return _oid(der, language_start, language_end)
    return None


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
    """The same fields from one DER-encoded certificate, and ``cn`` (the subject's first commonName,
    or "") and ``proxy`` (the policy language OID of an RFC 3820 proxy; None for any other
    certificate)."""
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
            "cn": next((value for label, value in _attributes(der, subject_start, subject_end) if label == "CN"), ""),
            "proxy": _proxy_policy(der, fields[6:]),
        }
    except (IndexError, ValueError, StopIteration) as exc:
        raise ValueError(str(exc) or "malformed DER") from None


def owner(chain) -> dict:
    """The certificate whose identity a chain carries (``parse_der``'s fields, with ``proxies``: how
    many proxy levels stood in front of it): the first certificate for any but a proxy; for an
    RFC 3820 proxy the end-entity certificate that signed it, through every level.

    ``chain``: DER certificates, the peer's first, *as OpenSSL verified them* -- OpenSSL (with proxies
    allowed) has checked every signature up to the CA and that each proxy's subject is its issuer's
    plus one CN, so the first certificate without proxyCertInfo is the owner.  Never the proxy's own
    CN, which its holder chose.  ValueError when the chain cannot say: a proxy whose issuer is not
    in it, or one whose policy does not delegate its issuer's identity (id-ppl-independent, a
    language we do not know).
    """
    for level, der in enumerate(chain):
        cert = parse_der(der)
        if cert["proxy"] is None:
            return dict(cert, proxies=level)
        if cert["proxy"] not in DELEGATING_POLICIES:
            raise ValueError(
                "%s is a proxy of policy %s, which does not carry its issuer's identity (only %s proxies do)"
                % (cert["subject"], cert["proxy"], " and ".join(sorted(DELEGATING_POLICIES.values())))
            )
    raise ValueError("the chain ends at a proxy: the certificate of its owner is not in it")
