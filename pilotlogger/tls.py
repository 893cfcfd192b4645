"""The only place an ``SSLContext`` is made, so that every connection gets the same rules.

* Verification is always on: certificate chain and host name.  There is no switch to
  turn it off; plain TCP must be asked for by URL scheme (``stomp://``), never by accident.
* Trust: a CA file, a CA directory (``X509_CERT_DIR``, OpenSSL hashed layout, the grid
  convention), or — when neither is configured — ``/etc/grid-security/certificates`` if it
  exists, else the system's default CAs.
* Client identity: a certificate and key, or a grid proxy (``X509_USER_PROXY``: the
  certificate, its key and the chain in one PEM file, so no separate key; ``load_cert_chain``
  sends every certificate after the first as the chain, which a server needs to reach its CA).
* Servers accept grid proxies (RFC 3820) from clients, with OpenSSL's own proxy rules; which
  certificate a proxy speaks for is read from the chain OpenSSL verified (``verified_chain``).
* Errors name the file and say what to do; key contents never appear in a message.
"""

import os

GRID_CA_DIR = "/etc/grid-security/certificates"


class TLSConfigError(Exception):
    """The TLS settings cannot be used (missing or unreadable file, key does not match...)."""


def _check_readable(kind: str, path: str) -> None:
    if not os.path.exists(path):
        raise TLSConfigError("%s %s does not exist" % (kind, path))
    if not os.access(path, os.R_OK):
        raise TLSConfigError("%s %s is not readable by this user" % (kind, path))


def host_credentials(cert):
    """(hostcert.pem, hostkey.pem) when ``cert`` is a directory of host credentials, else None.

    DIRAC's pilot accepts a directory in X509_USER_PROXY holding a host certificate and
    key (and then tells the server with ``extraCredentials="hosts"``).
    """
    if cert and os.path.isdir(cert):
        return os.path.join(cert, "hostcert.pem"), os.path.join(cert, "hostkey.pem")
    return None


def client_context(ca_file=None, ca_dir=None, cert=None, key=None, ca_dir_now=False):
    """A client context with verification on, trust and identity loaded from the given files.

    ``ca_dir_now``: read every hashed certificate of ``ca_dir`` now, rather than when a handshake
    looks one up (for a directory that may be gone by then: the Pilot's, see pilotcred.py).
    """
    import ssl

    if host_credentials(cert):
        cert, key = host_credentials(cert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    if hasattr(context, "minimum_version"):
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    else:  # Python 3.6
        context.options |= ssl.OP_NO_TLSv1 | ssl.OP_NO_TLSv1_1
    if ca_file:
        _check_readable("CA file", ca_file)
    if ca_dir:
        _check_readable("CA directory", ca_dir)
    if not ca_file and not ca_dir and os.path.isdir(GRID_CA_DIR):
        ca_dir = GRID_CA_DIR
    try:
        if ca_dir and ca_dir_now:
            _load_hashed_now(context, ca_dir)
            if ca_file:
                context.load_verify_locations(cafile=ca_file)
        elif ca_file or ca_dir:
            context.load_verify_locations(cafile=ca_file, capath=ca_dir)
        else:
            context.load_default_certs()
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError("cannot load CA certificates from %s (%s)" % (ca_file or ca_dir, _reason(exc))) from None
    if cert:
        _check_readable("client certificate", cert)
        if key:
            _check_readable("client key", key)
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise TLSConfigError(
                "cannot use client certificate %s%s (%s: is the key in it or given, unencrypted, and matching?)"
                % (cert, " with key %s" % key if key else "", _reason(exc))
            ) from None
        except OSError as exc:
            raise TLSConfigError("cannot read client certificate %s (%s)" % (cert, _reason(exc))) from None
    elif key:
        raise TLSConfigError("a client key %s is configured without a certificate (set cert as well)" % key)
    return context


def _load_hashed_now(context, ca_dir: str) -> None:
    """Load the certificates of a hashed CA directory (``<8 hex>.<n>``, OpenSSL's layout) into
    ``context`` now; a file that is not a certificate (a CRL, a policy) is passed over."""
    import re
    import ssl

    loaded = 0
    for name in sorted(os.listdir(ca_dir)):
        if re.match(r"[0-9a-f]{8}\.[0-9]+\Z", name):
            try:
                context.load_verify_locations(cafile=os.path.join(ca_dir, name))
                loaded += 1
            except (ssl.SSLError, OSError):
                continue
    if not loaded:
        raise OSError("no hashed CA certificate (<8 hex>.<n>) could be read there")


def client_context_for(config):
    """The client context for a configuration's trust and identity settings (see client_context)."""
    return client_context(config.ca_file, config.ca_dir, config.cert, config.key)


def server_hostname(host: str):
    """``host`` as ``server_hostname``/``getaddrinfo`` want it: ASCII names as bytes, so CPython
    skips the idna codec (≈3 ms to import, with unicodedata and stringprep)."""
    try:
        return host.encode("ascii")
    except UnicodeEncodeError:
        return host


#: X509_V_FLAG_ALLOW_PROXY_CERTS: ``ssl.VERIFY_ALLOW_PROXY_CERTS`` from Python 3.10; the same bit
#: set through ``verify_flags`` works on 3.6-3.9 too (measured with OpenSSL 3.0).  OpenSSL 3 no
#: longer reads the old OPENSSL_ALLOW_PROXY_CERTS environment variable: the flag is the only switch.
ALLOW_PROXY_CERTS = 0x40


def server_context(cert: str, key: str, client_ca=None, require_client_cert: bool = False):
    """A server context for ``pilotlog serve``: our certificate; client certificates checked
    against ``client_ca`` when given (and required with ``require_client_cert``).

    Grid proxies are accepted from clients: with the allow-proxy flag OpenSSL verifies an RFC 3820
    proxy chain (proxy ← … ← the user's certificate ← the CA) -- every signature, every validity
    period, each proxy's subject being its issuer's plus one CN, path-length constraints -- instead
    of refusing it ("proxy certificates not allowed").  Nothing else changes: the CA chain, expiry
    and the rest are checked as before, and client contexts never get the flag.
    """
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if hasattr(context, "minimum_version"):
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    for kind, path in (("server certificate", cert), ("server key", key), ("client CA file", client_ca)):
        if path:
            _check_readable(kind, path)
    try:
        context.load_cert_chain(cert, key)
        if client_ca:
            context.load_verify_locations(cafile=client_ca)
            context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
            context.verify_flags |= getattr(ssl, "VERIFY_ALLOW_PROXY_CERTS", ALLOW_PROXY_CERTS)
    except ssl.SSLError as exc:
        raise TLSConfigError("cannot use server certificate %s / key %s (%s)" % (cert, key, _reason(exc))) from None
    if require_client_cert and not client_ca:
        raise TLSConfigError("requiring client certificates needs --client-ca to verify them")
    return context


def verified_chain(sock) -> "list | None":
    """The peer's chain as OpenSSL verified it: DER certificates, the peer's own first, the CA last.

    None where this Python cannot say: ``get_verified_chain`` is public from Python 3.13; 3.10 to
    3.12 have the same C function on the private ``_sslobj`` (what 3.13's public one calls);
    before 3.10 only the peer's own certificate can be read (``getpeercert``).  An empty list when
    nothing was verified (no certificate; a resumed session).
    """
    get = getattr(sock, "get_verified_chain", None) or getattr(
        getattr(sock, "_sslobj", None), "get_verified_chain", None
    )
    if get is None:
        return None
    from _ssl import ENCODING_DER  # 3.10-3.12 give _ssl.Certificate objects, 3.13 DER bytes

    return [c if isinstance(c, bytes) else c.public_bytes(ENCODING_DER) for c in get() or []]


def can_read_verified_chain() -> bool:
    """Can this Python tell a server which certificates OpenSSL verified (see ``verified_chain``)?"""
    import _ssl
    import ssl

    return any(hasattr(cls, "get_verified_chain") for cls in (ssl.SSLSocket, getattr(_ssl, "_SSLSocket", None)))


def common_name(name) -> str:
    """The commonName of a subject or issuer as ``ssl`` describes it (a tuple of RDNs), or ""."""
    for rdn in name or ():
        for key, value in rdn:
            if key == "commonName":
                return value
    return ""


def _reason(exc) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)


# TLS alerts by which a server says it will not take our client certificate.
_CLIENT_CERT_ALERTS = (
    "ALERT_CERTIFICATE_EXPIRED",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_UNKNOWN_CA",
    "ALERT_CERTIFICATE_REVOKED",
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_UNSUPPORTED_CERTIFICATE",
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_ACCESS_DENIED",
)


def _refused_our_certificate(exc) -> bool:
    return any(alert in str(exc) for alert in _CLIENT_CERT_ALERTS)


def is_verify_error(exc) -> bool:
    """Did a certificate fail — the server's (chain or host name), or ours as the server judged it?

    Retrying cannot help either, so callers stop at once instead of spending their deadline.
    """
    import ssl

    verify_error = getattr(ssl, "SSLCertVerificationError", ())
    return (
        isinstance(exc, verify_error)
        or isinstance(exc, ssl.CertificateError)
        or "CERTIFICATE_VERIFY_FAILED" in str(exc)
        or _refused_our_certificate(exc)
    )


def describe_verify_error(exc) -> str:
    """One line for a failed handshake: what did not verify, and what to check."""
    text = getattr(exc, "verify_message", None) or _reason(exc)
    if "hostname" in str(exc).lower() or "IP address mismatch" in str(exc):
        return "server certificate does not match the host name (%s)" % text
    if getattr(exc, "verify_code", None) is not None or "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return "server certificate not trusted (%s): check ca_file/ca_dir" % text
    if _refused_our_certificate(exc):
        return "the server refused our client certificate (%s): check cert/key, or renew the proxy" % text
    return "TLS handshake failed (%s)" % text
