"""An S3-compatible server on 127.0.0.1 (moto's standalone server), for tests and benchmarks.

It speaks the S3 wire protocol, conditional writes included (a second
``If-None-Match: *`` create and a stale ``If-Match`` are refused with 412), so
:class:`~codex_supervisor.appserver.objectstore.ObjectStoreHomeStore` runs
against it as against AWS S3, MinIO or R2. It is an emulator: nothing here
reaches a cloud.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._server import LocalServer

__all__ = ["S3Server"]


class S3Server(LocalServer):
    """``python -m moto.server`` on 127.0.0.1 at a free port (extra ``testing`` + moto).

    :attr:`endpoint` is its URL; :meth:`bucket` makes a bucket;
    :meth:`store` gives an ``obstore`` ``S3Store`` for a bucket with the
    settings any S3-compatible endpoint needs (path-style, plain HTTP, dummy
    credentials). Use it as a context manager; :meth:`stop` (SIGTERM, then
    SIGKILL) is idempotent.
    """

    def __init__(self) -> None:
        try:
            import moto.server  # noqa: F401, PLC0415 - only to say what is missing
        except ImportError as exc:
            raise ConfigError("S3Server needs moto's server: pip install 'moto[server]'") from exc
        super().__init__()
        self._log = Path(tempfile.mkstemp(prefix="codex-supervisor-s3-", suffix=".log")[1])

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it answers."""
        if self._proc is not None and self._proc.poll() is None:
            return
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._proc.poll() is not None:
                tail = self._log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"moto.server exited ({self._proc.returncode}):\n{tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"moto.server did not answer on port {self.port}")
            time.sleep(0.05)

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (an existing one is fine); returns the name."""
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=10):
            return name

    def store(self, bucket: str, **options: Any) -> Any:
        """An ``obstore`` ``S3Store`` for ``bucket`` on this server (made if missing)."""
        from obstore.store import S3Store  # noqa: PLC0415 - the optional dependency

        self.bucket(bucket)
        return S3Store(
            bucket,
            endpoint=self.endpoint,
            access_key_id="testing",
            secret_access_key="testing",
            region="us-east-1",
            virtual_hosted_style_request=False,
            client_options={"allow_http": True},
            **options,
        )

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/", timeout=0.5):
                return True
        except OSError:
            return False

    def _cleanup(self) -> None:
        with contextlib.suppress(OSError):
            self._log.unlink()
