"""The fabric: authenticated, framed, batched TCP page transport between hosts.

It carries page-ins, page-outs, bulk migration streams and drops between the
agents of compute hosts. One module per concern:

* ``wire``: the wire format (header, message types, bodies, limits), declared once;
* ``errors``: the exceptions, and the ERROR codes that carry them across;
* ``auth``: the shared-key HMAC handshake and optional mutual TLS;
* ``connection``: framed vectored I/O over one socket, with full validation;
* ``service``: the ``PageService`` contract a server serves;
* ``server`` / ``client``: the two ends.
"""
