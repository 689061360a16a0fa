"""ObjectStoreHomeStore against a real S3-protocol server on 127.0.0.1 (moto's)."""

from __future__ import annotations

import asyncio
import io
import tarfile
import uuid
from datetime import timedelta
from pathlib import Path

import obstore
import pytest

from codex_supervisor import errors
from codex_supervisor.appserver.homestore import key_dir
from codex_supervisor.appserver.objectstore import ObjectStoreHomeStore
from codex_supervisor.testing import S3Server

pytestmark = pytest.mark.anyio


@pytest.fixture
def store(s3_server: S3Server) -> ObjectStoreHomeStore:
    return ObjectStoreHomeStore(s3_server.store(f"homes-{uuid.uuid4().hex[:12]}"), prefix="gw")


def _home(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sessions").mkdir(exist_ok=True)
    (root / "sessions" / "rollout.jsonl").write_text(text)
    (root / "auth.json").write_text('{"tokens": "never travels"}')
    return root


def _objects(store: ObjectStoreHomeStore, key: str) -> list[str]:
    listed = obstore.list(store.store, prefix=f"gw/{key_dir(key)}/").collect()
    return sorted(meta["path"].rsplit("/", 1)[-1] for meta in listed)


async def test_a_home_goes_up_and_comes_back_without_its_login(
    store: ObjectStoreHomeStore, tmp_path: Path
) -> None:
    assert await store.version("ws-1") is None
    await store.put("ws-1", _home(tmp_path / "a", "first"), version=1)
    await store.put("ws-1", _home(tmp_path / "a", "second"), version=2)
    assert await store.version("ws-1") == 2
    assert _objects(store, "ws-1") == ["00000000000000000002.tar.gz", "LATEST"]  # 1 pruned
    dest = tmp_path / "restored"
    dest.mkdir()
    assert await store.get("ws-1", dest) == 2
    assert (dest / "sessions" / "rollout.jsonl").read_text() == "second"
    assert not (dest / "auth.json").exists()


async def test_an_older_or_equal_archive_never_replaces_a_newer_one(
    store: ObjectStoreHomeStore, tmp_path: Path
) -> None:
    home = _home(tmp_path / "a", "newest")
    await store.put("ws-1", home, version=5)
    for stale in (5, 4):
        with pytest.raises(errors.StaleArchive) as refused:
            await store.put("ws-1", _home(tmp_path / "b", "older"), version=stale)
        assert refused.value.stored == 5
    assert _objects(store, "ws-1") == ["00000000000000000005.tar.gz", "LATEST"]


async def test_two_replicas_putting_at_once_end_on_the_newest(
    store: ObjectStoreHomeStore, tmp_path: Path
) -> None:
    """Puts race on the pointer's compare-and-swap: it only moves forward."""
    homes = {v: _home(tmp_path / f"h{v}", f"version {v}") for v in range(1, 9)}
    results = await asyncio.gather(
        *(store.put("ws-1", home, version=v) for v, home in homes.items()),
        return_exceptions=True,
    )
    assert all(r is None or isinstance(r, errors.StaleArchive) for r in results), results
    assert results[-1] is None  # the newest always lands
    dest = tmp_path / "restored"
    dest.mkdir()
    assert await store.get("ws-1", dest) == 8
    assert (dest / "sessions" / "rollout.jsonl").read_text() == "version 8"


async def test_a_hostile_archive_in_the_store_is_refused_on_restore(
    store: ObjectStoreHomeStore, tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        escape = tarfile.TarInfo("../escape.txt")
        escape.size = 3
        tar.addfile(escape, io.BytesIO(b"bad"))
    folder = f"gw/{key_dir('ws-evil')}"
    obstore.put(store.store, f"{folder}/00000000000000000001.tar.gz", buffer.getvalue())
    obstore.put(store.store, f"{folder}/LATEST", b"1")
    dest = tmp_path / "jail" / "dest"
    dest.mkdir(parents=True)
    with pytest.raises(errors.UnsafeArchive):
        await store.get("ws-evil", dest)
    assert not (tmp_path / "jail" / "escape.txt").exists()


async def test_delete_and_missing_keys(store: ObjectStoreHomeStore, tmp_path: Path) -> None:
    with pytest.raises(errors.HomeNotFound):
        await store.get("nobody", tmp_path)
    with pytest.raises(errors.HomeNotFound):
        await store.delete("nobody")
    await store.put("ws-1", _home(tmp_path / "a", "x"), version=1)
    await store.delete("ws-1")
    assert await store.version("ws-1") is None
    assert _objects(store, "ws-1") == []


async def test_a_server_out_of_reach_is_a_home_store_error(tmp_path: Path) -> None:
    from obstore.store import S3Store

    dead = S3Store(
        "homes", endpoint="http://127.0.0.1:1", access_key_id="x", secret_access_key="y",
        region="us-east-1", client_options={"allow_http": True, "timeout": "2s"},
        retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=1),
                      "backoff": {"init_backoff": timedelta(milliseconds=10),
                                  "max_backoff": timedelta(milliseconds=10), "base": 2}},
    )  # fmt: skip
    with pytest.raises(errors.HomeStoreError):
        await ObjectStoreHomeStore(dead).version("ws-1")
    with pytest.raises(errors.ConfigError):
        ObjectStoreHomeStore.from_url("nosuchscheme://bucket")


async def test_an_archive_the_pointer_may_name_is_never_deleted(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """The pointer moved but its reply was lost (an error after the move): the archive stays,
    and the next get restores it."""

    class LostReply(ObjectStoreHomeStore):
        async def _advance(self, key: str, folder: str, version: int) -> None:
            await super()._advance(key, folder, version)
            raise errors.HomeStoreError("the reply of the pointer's move was lost")

    store = LostReply(s3_server.store(f"homes-{uuid.uuid4().hex[:12]}"), prefix="gw")
    with pytest.raises(errors.HomeStoreError, match="lost"):
        await store.put("ws-1", _home(tmp_path / "a", "kept"), version=1)
    dest = tmp_path / "restored"
    dest.mkdir()
    assert await store.get("ws-1", dest) == 1
    assert (dest / "sessions" / "rollout.jsonl").read_text() == "kept"
