"""The usage probe trusts, and routes through, what Codex does in the same environment."""

from __future__ import annotations

import re
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from codex_supervisor import _tls
from codex_supervisor.accounts import AccountPool
from codex_supervisor.config import ca_bundle, proxy_environment
from codex_supervisor.errors import ConfigError, QuotaUnavailable
from codex_supervisor.quota import UsageCredentials, UsageEndpointSource
from codex_supervisor.selection import AccountSelector
from codex_supervisor.supervisor import Supervisor
from codex_supervisor.testing import FakeCodexBackend

_TRUST_VARIABLES = ("CODEX_CA_CERTIFICATE", "SSL_CERT_FILE", "SSL_CERT_DIR")


@pytest.fixture(autouse=True)
def _no_inherited_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's shell must not decide what these tests trust."""
    for name in _TRUST_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tls_backend() -> Iterator[FakeCodexBackend]:
    with FakeCodexBackend(tls=True) as backend:
        backend.add_account("acct-t", five_hour_used=21, weekly_used=3)
        yield backend


def _ca(backend: FakeCodexBackend) -> str:
    assert backend.ca_cert_path is not None
    return str(backend.ca_cert_path)


def _credentials(backend: FakeCodexBackend) -> Callable[[str], Awaitable[UsageCredentials]]:
    async def credentials(account: str) -> UsageCredentials:
        acct = backend.account("acct-t")
        return UsageCredentials(
            account=account,
            account_id=acct.account_id,
            access_token=acct.access_token,
            base_url=backend.chatgpt_base_url,
        )

    return credentials


# -- the regression: UsageEndpointSource built without an injected client ------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("variable", ["CODEX_CA_CERTIFICATE", "SSL_CERT_FILE"])
async def test_probe_trusts_the_ca_codex_is_told_to_trust(
    tls_backend: FakeCodexBackend, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """With only one of Codex's CA variables in os.environ, the probe verifies the backend."""
    monkeypatch.setenv(variable, _ca(tls_backend))
    async with UsageEndpointSource(_credentials(tls_backend), retries=0) as source:
        snapshot = await source.fetch("alice")
    assert snapshot.five_hour is not None
    assert snapshot.five_hour.used_percent == 21


@pytest.mark.anyio
@pytest.mark.parametrize("variable", ["CODEX_CA_CERTIFICATE", "SSL_CERT_FILE"])
async def test_probe_reads_the_given_environment_not_os_environ(
    tls_backend: FakeCodexBackend, variable: str
) -> None:
    """An explicit ``environ`` carries the CA even when os.environ does not."""
    environ = {variable: _ca(tls_backend)}
    async with UsageEndpointSource(_credentials(tls_backend), environ=environ) as source:
        snapshot = await source.fetch("alice")
    assert snapshot.five_hour is not None


@pytest.mark.anyio
async def test_without_the_ca_the_probe_fails_verification(
    tls_backend: FakeCodexBackend,
) -> None:
    """With neither variable the throwaway CA is not trusted: QuotaUnavailable, not a bypass."""
    async with UsageEndpointSource(_credentials(tls_backend), environ={}, retries=0) as source:
        with pytest.raises(QuotaUnavailable, match=r"(?i)certificate verify failed"):
            await source.fetch("alice")


@pytest.mark.anyio
async def test_codex_ca_certificate_wins_over_ssl_cert_file(
    tls_backend: FakeCodexBackend, tmp_path: Path
) -> None:
    """CODEX_CA_CERTIFICATE is used even when SSL_CERT_FILE names another bundle."""
    missing = tmp_path / "nowhere.pem"
    environ = {"CODEX_CA_CERTIFICATE": _ca(tls_backend), "SSL_CERT_FILE": str(missing)}
    async with UsageEndpointSource(_credentials(tls_backend), environ=environ) as source:
        assert (await source.fetch("alice")).five_hour is not None
    assert ca_bundle(environ) == ("CODEX_CA_CERTIFICATE", Path(_ca(tls_backend)))


def test_empty_values_count_as_unset() -> None:
    """``VAR=""`` selects nothing, as in Codex; SSL_CERT_FILE then applies."""
    assert ca_bundle({"CODEX_CA_CERTIFICATE": "", "SSL_CERT_FILE": "/x.pem"}) == (
        "SSL_CERT_FILE",
        Path("/x.pem"),
    )
    assert ca_bundle({"CODEX_CA_CERTIFICATE": "", "SSL_CERT_FILE": ""}) is None


# -- bad bundles: a clear ConfigError naming the path, never an unverified client ----------------


@pytest.mark.parametrize("variable", ["CODEX_CA_CERTIFICATE", "SSL_CERT_FILE"])
def test_a_missing_bundle_is_a_config_error_naming_it(tmp_path: Path, variable: str) -> None:
    """A bundle path that does not exist fails at construction, naming variable and path."""
    missing = tmp_path / "missing-ca.pem"
    with pytest.raises(ConfigError) as info:
        UsageEndpointSource(_credentials_never, environ={variable: str(missing)})
    assert str(missing) in str(info.value)
    assert variable in str(info.value)


@pytest.mark.parametrize(
    "content", ["", "not a certificate\n", "-----BEGIN CERTIFICATE-----\nxx\n"]
)
def test_a_bundle_without_certificates_is_a_config_error(tmp_path: Path, content: str) -> None:
    """A file that holds no PEM certificate fails at construction, naming the path."""
    bogus = tmp_path / "bogus.pem"
    bogus.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(str(bogus))):
        UsageEndpointSource(_credentials_never, environ={"CODEX_CA_CERTIFICATE": str(bogus)})


def test_a_folder_is_not_a_bundle(tmp_path: Path) -> None:
    """A folder named as the bundle is refused, not read as a CA directory."""
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
        _tls.ssl_context({"SSL_CERT_FILE": str(tmp_path)})


def test_the_context_always_verifies(tls_backend: FakeCodexBackend) -> None:
    """Whatever the environment, the context checks certificates and host names."""
    for environ in ({}, {"CODEX_CA_CERTIFICATE": _ca(tls_backend)}):
        ctx = _tls.ssl_context(environ)
        assert ctx.verify_mode is ssl.CERT_REQUIRED
        assert ctx.check_hostname is True


async def _credentials_never(account: str) -> UsageCredentials:
    raise AssertionError(account)


# -- proxies: read from the given environment, as httpx's trust_env would -------------------------


def test_proxy_variables_lowercase_wins_and_empty_is_unset() -> None:
    """The proxy settings follow urllib's spelling rules."""
    environ = {
        "HTTPS_PROXY": "http://upper:3128",
        "https_proxy": "http://lower:3128",
        "HTTP_PROXY": "",
        "NO_PROXY": "localhost,.corp",
    }
    assert proxy_environment(environ) == {"https": "http://lower:3128", "no": "localhost,.corp"}


@pytest.mark.anyio
async def test_the_probe_goes_through_the_environment_proxy(tls_backend: FakeCodexBackend) -> None:
    """HTTPS_PROXY from the given environment routes the probe; NO_PROXY exempts hosts."""
    environ = {"CODEX_CA_CERTIFICATE": _ca(tls_backend), "HTTPS_PROXY": "127.0.0.1:9"}
    client = _tls.async_client(environ, timeout=5.0)
    async with client:
        transport = client._transport_for_url(httpx.URL(tls_backend.chatgpt_base_url))
        assert transport is not client._transport
    exempt = _tls.async_client({**environ, "NO_PROXY": "127.0.0.1"}, timeout=5.0)
    async with exempt, UsageEndpointSource(_credentials(tls_backend), client=exempt) as source:
        assert (await source.fetch("alice")).five_hour is not None


def test_a_bad_proxy_url_is_a_config_error() -> None:
    """An unusable proxy URL is reported as configuration, not a traceback at first probe."""
    with pytest.raises(ConfigError, match="proxy"):
        _tls.async_client({"HTTPS_PROXY": "ftp://proxy:21"}, timeout=1.0)


# -- the selector and the Supervisor pass their environment through ------------------------------


def _pool(tmp_path: Path, backend: FakeCodexBackend) -> AccountPool:
    base = backend.write_codex_home(tmp_path / "base")
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=base)
    source = backend.write_auth(tmp_path / "login-alpha", "acct-t")
    pool.import_auth("alpha", source)
    pool.prepare_home("alpha")
    return pool


@pytest.mark.anyio
async def test_selector_probes_with_the_ca_of_its_environment(
    tls_backend: FakeCodexBackend, tmp_path: Path
) -> None:
    """An AccountSelector given an environment with the CA probes the TLS backend."""
    pool = _pool(tmp_path, tls_backend)
    selector = AccountSelector(pool, environ=tls_backend.codex_env())
    try:
        found = await selector.refresh(["alpha"], budget=10.0)
    finally:
        await selector.aclose()
    assert selector.probe_errors == {}
    snapshot = found["alpha"]
    assert snapshot is not None
    assert snapshot.five_hour is not None
    assert snapshot.five_hour.used_percent == 21


@pytest.mark.anyio
async def test_selector_without_the_ca_records_a_verification_failure(
    tls_backend: FakeCodexBackend, tmp_path: Path
) -> None:
    """Without the CA the probe fails closed and says why."""
    pool = _pool(tmp_path, tls_backend)
    selector = AccountSelector(pool, environ={})
    try:
        found = await selector.refresh(["alpha"], budget=30.0)
    finally:
        await selector.aclose()
    assert found.get("alpha") is None
    assert "certificate verify failed" in str(selector.probe_errors["alpha"]).lower()


def test_selector_with_a_bad_bundle_fails_at_construction(tmp_path: Path) -> None:
    """A bad CA path surfaces as ConfigError when the selector is built, not inside a probe."""
    pool = AccountPool(root=tmp_path / "pool", base_codex_home=tmp_path / "base")
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        AccountSelector(pool, environ={"CODEX_CA_CERTIFICATE": str(missing)})


@pytest.mark.anyio
async def test_supervisor_hands_its_environment_to_the_selector(
    tls_backend: FakeCodexBackend, tmp_path: Path
) -> None:
    """Supervisor(environ=...) probes with the CA of that environment."""
    pool = _pool(tmp_path, tls_backend)
    supervisor = Supervisor(pool, environ=tls_backend.codex_env())
    try:
        found = await supervisor.selector.refresh(["alpha"], budget=10.0)
    finally:
        await supervisor.selector.aclose()
    assert found["alpha"] is not None
