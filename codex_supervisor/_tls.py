"""HTTP clients that trust and route as Codex does in the same environment.

The usage probe calls the endpoints Codex calls, for the user; behind a
TLS-inspecting proxy it must trust the CA Codex is told to trust, or every
probe fails certificate verification and the supervisor flies blind.

- Trust: the system store and certifi's bundle (httpx's default, kept so
  nothing that verified before stops verifying), plus the PEM bundle named by
  ``CODEX_CA_CERTIFICATE`` or else ``SSL_CERT_FILE`` — added to the roots, not
  replacing them, as Codex adds it to reqwest's. A bundle that cannot be read
  or holds no certificate is a :class:`~codex_supervisor.errors.ConfigError`
  naming the variable and the path; verification is never switched off.
- Proxies: ``HTTP(S)_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` read from the
  given environment (not necessarily ``os.environ``), mounted the way httpx
  mounts them with ``trust_env``.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping

import certifi
import httpx

from .config import ca_bundle, proxy_environment
from .errors import ConfigError

__all__ = ["async_client", "ssl_context"]

_HINT = (
    "point it at a PEM file holding one or more CERTIFICATE blocks, "
    "or unset it to use the system roots"
)


def ssl_context(environ: Mapping[str, str]) -> ssl.SSLContext:
    """A verifying client context with the roots Codex trusts in ``environ``."""
    ctx = ssl.create_default_context(cafile=certifi.where())
    # The platform store too: a CA installed system-wide is trusted by Codex.
    ctx.load_default_certs()
    selected = ca_bundle(environ)
    if selected is None:
        return ctx
    variable, path = selected
    try:
        ctx.load_verify_locations(cafile=path)
    except OSError as exc:
        # ssl.SSLError (no certificate in the file) is an OSError too.
        reason = exc.strerror or getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigError(
            f"cannot load the CA bundle {str(path)!r} named by {variable}: {reason}; {_HINT}"
        ) from exc
    return ctx


def _proxy_mounts(
    environ: Mapping[str, str], verify: ssl.SSLContext
) -> dict[str, httpx.AsyncBaseTransport | None]:
    proxies = proxy_environment(environ)
    mounts: dict[str, httpx.AsyncBaseTransport | None] = {}
    for scheme in ("http", "https", "all"):
        url = proxies.get(scheme)
        if url is None:
            continue
        if "://" not in url:
            url = f"http://{url}"
        try:
            mounts[f"{scheme}://"] = httpx.AsyncHTTPTransport(verify=verify, proxy=httpx.Proxy(url))
        except (ValueError, ImportError, httpx.InvalidURL) as exc:
            raise ConfigError(f"cannot use the {scheme} proxy from the environment: {exc}") from exc
    for host in (h.strip() for h in proxies.get("no", "").split(",")):
        if host == "*":
            return {}
        if not host:
            continue
        # The same patterns httpx derives from NO_PROXY (curl's rules).
        version = _ip_version(host)
        if "://" in host:
            mounts[host] = None
        elif version == 6:
            mounts[f"all://[{host.strip('[]')}]"] = None
        elif version == 4 or host.lower() == "localhost":
            mounts[f"all://{host}"] = None
        else:
            mounts[f"all://*{host}"] = None
    return mounts


def _ip_version(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("/")[0]).version
    except ValueError:
        return None


def async_client(environ: Mapping[str, str], *, timeout: float) -> httpx.AsyncClient:
    """An :class:`httpx.AsyncClient` with Codex's trust and proxies for ``environ``."""
    verify = ssl_context(environ)
    # trust_env=False: httpx would read SSL_CERT_FILE and the proxies from
    # os.environ, which need not be the environment the children run in.
    return httpx.AsyncClient(
        timeout=timeout, verify=verify, trust_env=False, mounts=_proxy_mounts(environ, verify)
    )
