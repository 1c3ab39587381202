"""Serving certificates for the HTTPS listeners (REST and webhook), reloaded when their files change.

cert-manager rotates the Secret's files in place; new connections get the new certificate
without a restart.  The webhook listener can also require a client certificate (the API
server's), so that nothing but the API server can reach it.
"""

from __future__ import annotations

import asyncio
import os
import ssl

import structlog

log = structlog.get_logger("ipam.tls")


class TlsFiles:
    """An SSL context whose certificate (and client CA, if any) is reloaded when the files change."""

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str = "") -> None:
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        if client_ca_file:
            self.context.verify_mode = ssl.CERT_REQUIRED
        self._stamp = None
        self.reloads = 0
        self.reload()

    def _files(self) -> list[str]:
        return [f for f in (self.cert_file, self.key_file, self.client_ca_file) if f]

    def _files_stamp(self) -> tuple:
        return tuple((st.st_mtime_ns, st.st_size) for st in map(os.stat, self._files()))

    def reload(self) -> bool:
        stamp = self._files_stamp()
        if stamp == self._stamp:
            return False
        self.context.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file:  # adds to the trusted set; a rotated CA bundle normally carries old and new
            self.context.load_verify_locations(cafile=self.client_ca_file)
        self._stamp = stamp
        self.reloads += 1
        return True

    async def watch(self, interval: float = 2.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                if self.reload():
                    log.info("certificate reloaded", cert=self.cert_file)
            except (OSError, ssl.SSLError) as e:  # half-written files during a rotation: try again next time
                log.warning("cannot reload the certificate yet", cert=self.cert_file, error=str(e))
