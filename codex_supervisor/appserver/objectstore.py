"""Home archives in object storage — S3 and what speaks it, GCS, Azure — through ``obstore``.

:class:`ObjectStoreHomeStore` is a :class:`~codex_supervisor.appserver.homestore.HomeStore`
for gateway replicas on several machines (extra ``codex-supervisor[s3]``). Under
``prefix``, each key (named as :func:`~.homestore.key_dir` names it) has:

* ``<keydir>/<version:020d>.tar.gz`` — one object per version, written with a
  *conditional create*: a version is never written twice;
* ``<keydir>/LATEST`` — the newest version's number, moved only by a
  compare-and-swap on its ETag (``If-Match``; ``If-None-Match: *`` for the first).

A put uploads its archive first and then moves ``LATEST``, only forward: an
older or equal version is refused with
:class:`~codex_supervisor.errors.StaleArchive` (its upload deleted again), so
an older archive can never replace a newer one, whichever replica writes
last. Archives older than the one ``LATEST`` names are removed afterwards
(best effort; a get never needs them). A get reads ``LATEST``, then streams
that archive to a temporary file and restores it with
:func:`~.archive.unpack_home` (every hostile-archive refusal applies); a put
packs to a temporary file and streams it up. Nothing holds a whole archive in
memory. Credentials never travel (see :mod:`.archive`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, final

import attrs

from .. import errors
from .archive import pack_home, unpack_home
from .homestore import check_version, key_dir

__all__ = ["ObjectStoreHomeStore"]

log = logging.getLogger(__name__)

_LATEST = "LATEST"
_ARCHIVE = re.compile(r"([0-9]{20})\.tar\.gz")
_CAS_TRIES = 8


def _not_found() -> tuple[type[BaseException], ...]:
    return (_obstore().exceptions.NotFoundError, FileNotFoundError)


def _failed() -> tuple[type[BaseException], ...]:
    # obstore raises its own errors, and builtins for some (FileNotFoundError, ...).
    return (_obstore().exceptions.BaseError, OSError)


def _obstore() -> Any:
    try:
        import obstore  # noqa: PLC0415 - the optional dependency
    except ImportError as exc:
        raise errors.ConfigError(
            "ObjectStoreHomeStore needs obstore: pip install 'codex-supervisor[s3]'"
        ) from exc
    return obstore


@final
@attrs.define
class ObjectStoreHomeStore:
    """A :class:`~.homestore.HomeStore` in an object store (an ``obstore`` store).

    ``store`` is any ``obstore.store`` object (``S3Store``, ``GCSStore``,
    ``AzureStore``, ``LocalStore``, ``MemoryStore``); :meth:`from_url` builds
    one from a URL such as ``s3://bucket/prefix``. ``scratch`` is where
    archives are staged on their way (default: the system's temp folder).
    The store must support conditional writes (AWS S3 since 2024, MinIO,
    Cloudflare R2, GCS, Azure do).
    """

    store: Any
    prefix: str = attrs.field(default="", kw_only=True)
    scratch: Path | None = attrs.field(default=None, kw_only=True)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "", **options: Any) -> ObjectStoreHomeStore:
        """A store at ``url`` (``s3://bucket``, ``gs://…``, ``az://…``, ``file:///…``).

        ``options`` go to ``obstore.store.from_url`` (``endpoint``,
        ``region``, ``client_options``, credentials: by default from the
        environment, as each cloud's SDK reads them).
        """
        obstore = _obstore()
        try:
            store = obstore.store.from_url(url, **options)
        except Exception as exc:  # noqa: BLE001 - obstore's errors, named in the message
            raise errors.ConfigError(f"cannot use the object store {url!r}: {exc}") from None
        return cls(store, prefix=prefix)

    # -- the protocol ------------------------------------------------------------

    async def put(self, key: str, source: Path, *, version: int) -> None:
        """Archive ``source`` as ``version`` of ``key``: StaleArchive unless it is the newest."""
        folder = self._folder(key)
        check_version(version)
        latest, _ = await self._latest(folder)
        if latest is not None and latest >= version:
            raise errors.StaleArchive(key, version, latest)
        path = f"{folder}/{version:020d}.tar.gz"
        with self._staged() as staged:
            stats = await asyncio.to_thread(pack_home, Path(source), staged)
            staged.seek(0)
            try:
                await self._put_file(path, staged)
            except _obstore().exceptions.AlreadyExistsError:
                # A replica uploaded this very version first.
                raise errors.StaleArchive(key, version, version) from None
            except _failed() as exc:
                raise errors.HomeStoreError(f"cannot upload {path}: {exc}") from None
        try:
            await self._advance(key, folder, version)
        except errors.StaleArchive:
            # A newer version is LATEST: ours is named by nothing, and goes. (After
            # any other failure LATEST may name it: it stays, pruned by a later put.)
            with contextlib.suppress(errors.HomeStoreError):
                await self._call(f"delete {path}", self._delete_path, path)
            raise
        await self._prune(folder, version)
        log.info("homestore.put key=%r version=%d files=%d bytes=%d store=object", key, version,
                 stats.files, stats.bytes)  # fmt: skip

    async def get(self, key: str, dest: Path) -> int:
        """Restore the newest archive of ``key`` into ``dest``; returns its version."""
        folder = self._folder(key)
        for _ in range(_CAS_TRIES):
            latest, _ = await self._latest(folder)
            if latest is None:
                raise errors.HomeNotFound(key)
            path = f"{folder}/{latest:020d}.tar.gz"
            with self._staged() as staged:
                try:
                    await self._download(path, staged)
                except _not_found():
                    continue  # a newer put pruned it meanwhile: read LATEST again
                except _failed() as exc:
                    raise errors.HomeStoreError(f"cannot download {path}: {exc}") from None
                staged.seek(0)
                stats = await asyncio.to_thread(unpack_home, staged, Path(dest))
            log.info("homestore.get key=%r version=%d files=%d bytes=%d store=object", key,
                     latest, stats.files, stats.bytes)  # fmt: skip
            return latest
        raise errors.HomeStoreError(f"the archives of {key!r} keep changing; try again")

    async def delete(self, key: str) -> None:
        """Remove every archive of ``key`` (and its pointer); HomeNotFound when there is none."""
        folder = self._folder(key)
        paths = await self._list(folder)
        if not paths:
            raise errors.HomeNotFound(key)
        for path in paths:
            await self._call(f"delete {path}", self._delete_path, path)
        log.info("homestore.delete key=%r store=object", key)

    async def version(self, key: str) -> int | None:
        """The newest stored version of ``key``, or None."""
        return (await self._latest(self._folder(key)))[0]

    # -- object work ---------------------------------------------------------------

    def _folder(self, key: str) -> str:
        return f"{self.prefix.rstrip('/') + '/' if self.prefix else ''}{key_dir(key)}"

    @contextlib.contextmanager
    def _staged(self) -> Any:
        with tempfile.TemporaryFile(dir=self.scratch) as staged:
            yield staged

    async def _call(self, what: str, call: Any, *args: Any) -> Any:
        try:
            return await call(*args)
        except _failed() as exc:
            raise errors.HomeStoreError(f"cannot {what} in the object store: {exc}") from None

    async def _put_file(self, path: str, staged: BinaryIO) -> None:
        # A create: the same version never lands twice.
        await _obstore().put_async(self.store, path, staged, mode="create", use_multipart=False)

    async def _delete_path(self, path: str) -> None:
        await _obstore().delete_async(self.store, path)

    async def _download(self, path: str, staged: BinaryIO) -> None:
        result = await _obstore().get_async(self.store, path)
        async for chunk in result.stream():
            await asyncio.to_thread(staged.write, bytes(chunk))

    async def _latest(self, folder: str) -> tuple[int | None, str | None]:
        """The version ``LATEST`` names, and its ETag; (None, None) when there is none."""
        obstore = _obstore()
        path = f"{folder}/{_LATEST}"
        try:
            result = await obstore.get_async(self.store, path)
            data = bytes(await result.bytes_async())
        except _not_found():
            return None, None
        except _failed() as exc:
            raise errors.HomeStoreError(f"cannot read {path}: {exc}") from None
        try:
            return int(data.decode("ascii").strip()), result.meta.get("e_tag")
        except (UnicodeDecodeError, ValueError):
            raise errors.HomeStoreError(f"{path} holds no version number") from None

    async def _advance(self, key: str, folder: str, version: int) -> None:
        """Move ``LATEST`` to ``version`` by compare-and-swap, only forward."""
        obstore = _obstore()
        path = f"{folder}/{_LATEST}"
        for _ in range(_CAS_TRIES):
            latest, etag = await self._latest(folder)
            if latest == version:
                return  # our own move, its reply lost: this version's object is ours alone
            if latest is not None and latest > version:
                raise errors.StaleArchive(key, version, latest)
            mode: Any = "create" if etag is None else {"e_tag": etag}
            try:
                await obstore.put_async(self.store, path, str(version).encode(), mode=mode)
            except (obstore.exceptions.AlreadyExistsError, obstore.exceptions.PreconditionError):
                continue  # another replica moved it first: look again
            except _failed() as exc:
                raise errors.HomeStoreError(f"cannot write {path}: {exc}") from None
            return
        raise errors.HomeStoreError(f"{path} keeps changing; the archive was not committed")

    async def _list(self, folder: str) -> list[str]:
        try:
            pages = _obstore().list(self.store, prefix=f"{folder}/")
            return [meta["path"] async for page in pages for meta in page]
        except _failed() as exc:
            raise errors.HomeStoreError(f"cannot list {folder}: {exc}") from None

    async def _prune(self, folder: str, keep: int) -> None:
        try:
            for path in await self._list(folder):
                found = _ARCHIVE.fullmatch(path.rsplit("/", 1)[-1])
                if found is not None and int(found.group(1)) < keep:
                    await self._call(f"delete {path}", self._delete_path, path)
        except errors.HomeStoreError as exc:
            log.warning("could not remove older archives under %s: %s", folder, exc)
