"""TLS for the project's HTTP clients: the cloud API (CLI, loop, device enrollment), a device's capture uploads
and its update downloads. One rule everywhere: the system's CA store, or the PEM bundle a deployment names
for a cloud whose certificate a private CA signed (`[cloud] ca` in device.toml, `--ca` on `device enroll`).
Python's default context honours `SSL_CERT_FILE` too, so CLI users of a private CA can set that instead.

    context = client_context(Path("/etc/edgefleet/ca.pem"))   # or client_context(None): the system's store
"""

from __future__ import annotations

import ssl
from functools import lru_cache
from pathlib import Path

from edgefleet.core.errors import EdgefleetError


def client_context(ca: Path | str | None) -> ssl.SSLContext:
    """A verifying client context (hostname checked, TLS 1.2 or later) trusting `ca`'s certificates, or the
    system's when `ca` is None. A file that is missing or holds no certificate raises EdgefleetError naming it."""
    return _context(str(Path(ca).resolve()) if ca is not None else None)


@lru_cache(maxsize=8)
def _context(ca: str | None) -> ssl.SSLContext:
    if ca is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=ca)
    except FileNotFoundError as err:
        raise EdgefleetError(f"CA file {ca} does not exist") from err
    except (ssl.SSLError, OSError) as err:
        raise EdgefleetError(f"CA file {ca} holds no PEM certificate the TLS library can read ({err})") from err


def check_server_files(cert: Path, key: Path) -> None:
    """Refuses a certificate/key pair the HTTP server could not use, with one line naming the file, before the
    server starts (uvicorn would otherwise fail in its own thread)."""
    for what, path in (("certificate", cert), ("key", key)):
        if not Path(path).is_file():
            raise EdgefleetError(f"TLS {what} {path} does not exist")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as err:
        raise EdgefleetError(f"TLS certificate {cert} and key {key} cannot be used together: {err}") from err
