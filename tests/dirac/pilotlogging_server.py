"""DIRAC's own TornadoPilotLoggingHandler over TLS, run by the DIRAC venv's python (tests only).

    python pilotlogging_server.py CS_FILE PORT SERVER_CERT SERVER_KEY CA_FILE WORKDIR

Made ready as DIRAC's HandlerManager does it, with three adaptations, each because the
production server uses a Tornado fork (tornado_m2crypto) with M2Crypto sockets and this one
stdlib TLS: Tornado 5.1.1 needs the old ``collections`` aliases on Python 3.10+; the
request's ``get_ssl_certificate()`` gives DIRAC an M2Crypto X509 of the peer (from the
stdlib socket's DER form) and ``get_ssl_certificate_chain()`` the M2Crypto X509s of the
chain the client sent, without its own certificate -- what tornado_m2crypto gives DIRAC
(OpenSSL's SSL_get_peer_cert_chain on a server), read here from the stdlib socket's
unverified chain (public from Python 3.13, on ``_sslobj`` from 3.10: this venv is 3.11); and
the TLS context allows grid proxies, as DIRAC's own M2Crypto transport does
(X509_V_FLAG_ALLOW_PROXY_CERTS).  Everything else -- form decoding, proxy and group reading
(X509Chain), authorisation from the CS file, the VO rule, FileCacheLoggingPlugin writing
``WORKDIR/pilotlogs`` -- is DIRAC's.
Prints ``READY`` on stdout once it listens, then closes stdout: DIRAC logs to stdout, which
goes to stderr instead (a pipe nobody reads would fill up and hang the service).
"""

import collections
import collections.abc
import os
import ssl
import sys

for _name in (
    "MutableMapping",
    "Mapping",
    "MutableSet",
    "Sequence",
    "Callable",
    "Iterable",
    "Hashable",
    "MutableSequence",
):
    setattr(collections, _name, getattr(collections.abc, _name))


def main(cfg, port, cert, key, ca, workdir):
    ready = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    os.chdir(workdir)  # FileCacheLoggingPlugin writes pilotlogs/ under the working directory
    from DIRAC import gConfig
    from DIRAC.ConfigurationSystem.private.ConfigurationClient import ConfigurationClient

    ConfigurationClient(fileToLoadList=[cfg])
    assert gConfig.getValue("/Systems/WorkloadManagement/Services/TornadoPilotLogging/LoggingPlugin")

    import M2Crypto.X509
    import tornado.httpserver
    import tornado.httputil
    import tornado.ioloop
    import tornado.web

    def get_ssl_certificate(self):
        der = self.connection.stream.socket.getpeercert(binary_form=True)
        return M2Crypto.X509.load_cert_der_string(der) if der else None

    def get_ssl_certificate_chain(self):
        sock = self.connection.stream.socket
        sent = getattr(sock, "get_unverified_chain", None) or sock._sslobj.get_unverified_chain
        ders = [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER) for c in sent() or []]
        leaf = sock.getpeercert(binary_form=True)
        return [M2Crypto.X509.load_cert_der_string(der) for der in ders if der != leaf]

    tornado.httputil.HTTPServerRequest.get_ssl_certificate = get_ssl_certificate
    tornado.httputil.HTTPServerRequest.get_ssl_certificate_chain = get_ssl_certificate_chain

    from DIRAC.WorkloadManagementSystem.Service.TornadoPilotLoggingHandler import TornadoPilotLoggingHandler

    class Handler(TornadoPilotLoggingHandler):
        _fullComponentName = "WorkloadManagement/TornadoPilotLogging"

    routes = Handler._BaseRequestHandler__pre_initialize()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cafile=ca)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.verify_flags |= 0x40  # X509_V_FLAG_ALLOW_PROXY_CERTS, as DIRAC's M2Utils sets it
    server = tornado.httpserver.HTTPServer(tornado.web.Application(routes), ssl_options=context)
    server.listen(int(port), "127.0.0.1")
    ready.write("READY\n")
    ready.close()
    tornado.ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main(*sys.argv[1:])
