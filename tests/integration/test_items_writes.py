"""Idempotent creates, bulk creates and attachments."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from httpx import ASGITransport, AsyncClient
from sqlalchemy import event, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.batcher import OutcomeUnknownError
from app.core.config import Settings
from app.core.principal import Principal
from app.main import create_app
from app.models import User
from app.models.outbox import OutboxEvent
from app.repositories.attachments import AttachmentRepository
from app.repositories.items import ItemRepository
from app.schemas.item import ItemCreate
from app.services.items import CreatedItem, ItemCreator
from tests.conftest import audit_rows, bearer, login, make_settings, make_user

ITEMS = "/api/v1/items"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PDF = b"%PDF-1.7\n" + b"1 0 obj\n" * 8


@pytest.fixture
async def token(client: AsyncClient, alice: User) -> str:
    return str((await login(client, "alice"))["access_token"])


@pytest.fixture
async def bob_token(app: Any, client: AsyncClient) -> str:
    await make_user(app, "bob")
    return str((await login(client, "bob"))["access_token"])


def _slow_down(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
    """Make `owner.name` wait a moment first (so concurrent requests meet there)."""
    original = getattr(owner, name)

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.2)
        return await original(*args, **kwargs)

    monkeypatch.setattr(owner, name, slow)


async def count_items(client: AsyncClient, token: str) -> int:
    response = await client.get(ITEMS, headers=bearer(token))
    total: int = response.json()["data"]["total"]
    return total


class TestIdempotency:
    async def test_same_key_and_body_replays_the_first_answer(
        self, client: AsyncClient, token: str
    ) -> None:
        headers = {**bearer(token), "Idempotency-Key": "order-42"}
        first = await client.post(ITEMS, json={"title": "once"}, headers=headers)
        second = await client.post(ITEMS, json={"title": "once"}, headers=headers)

        assert first.status_code == second.status_code == 201
        assert second.json() == first.json()
        assert second.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        assert second.headers["etag"] == first.headers["etag"]
        assert await count_items(client, token) == 1

    async def test_same_key_other_body_is_422(
        self, client: AsyncClient, token: str
    ) -> None:
        headers = {**bearer(token), "Idempotency-Key": "k1"}
        await client.post(ITEMS, json={"title": "a"}, headers=headers)
        response = await client.post(ITEMS, json={"title": "b"}, headers=headers)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
        assert await count_items(client, token) == 1

    async def test_keys_are_per_user(
        self, app: Any, client: AsyncClient, token: str
    ) -> None:
        await make_user(app, "bob")
        bob = (await login(client, "bob"))["access_token"]
        for who in (token, bob):
            response = await client.post(
                ITEMS,
                json={"title": "a"},
                headers={**bearer(who), "Idempotency-Key": "same"},
            )
            assert "idempotent-replayed" not in response.headers
        assert await count_items(client, token) == await count_items(client, bob) == 1

    async def test_concurrent_retries_create_one_item(
        self, client: AsyncClient, token: str
    ) -> None:
        headers = {**bearer(token), "Idempotency-Key": "burst"}
        responses = await asyncio.gather(
            *(
                client.post(ITEMS, json={"title": "burst"}, headers=headers)
                for _ in range(5)
            )
        )
        assert {r.status_code for r in responses} == {201}
        assert len({r.json()["data"]["id"] for r in responses}) == 1
        assert await count_items(client, token) == 1

    async def test_key_expires_after_a_day(
        self, client: AsyncClient, token: str
    ) -> None:
        headers = {**bearer(token), "Idempotency-Key": "daily"}
        await client.post(ITEMS, json={"title": "a"}, headers=headers)
        with time_machine.travel(timedelta(hours=25), tick=True):
            fresh = (await login(client, "alice"))["access_token"]
            again = await client.post(
                ITEMS,
                json={"title": "a"},
                headers={**bearer(fresh), "Idempotency-Key": "daily"},
            )
        assert again.status_code == 201
        assert "idempotent-replayed" not in again.headers
        assert await count_items(client, token) == 2

    @pytest.mark.parametrize("key", ["", "x" * 256, "has space", "tab\there"])
    async def test_bad_keys_are_422(
        self, client: AsyncClient, token: str, key: str
    ) -> None:
        response = await client.post(
            ITEMS,
            json={"title": "a"},
            headers={**bearer(token), "Idempotency-Key": key},
        )
        assert response.status_code == 422


class TestBulk:
    async def test_a_retried_bulk_create_with_its_key_creates_nothing_more(
        self, client: AsyncClient, token: str
    ) -> None:
        headers = {**bearer(token), "Idempotency-Key": "import-7"}
        body = {"items": [{"title": "x"}, {"title": "y"}]}
        first = await client.post(f"{ITEMS}/bulk", json=body, headers=headers)
        second = await client.post(f"{ITEMS}/bulk", json=body, headers=headers)
        other = await client.post(
            f"{ITEMS}/bulk", json={"items": [{"title": "z"}]}, headers=headers
        )
        # One key, two routes: each keeps its own answers.
        single = await client.post(ITEMS, json={"title": "x"}, headers=headers)

        assert first.status_code == second.status_code == 201
        assert second.json() == first.json()
        assert second.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        assert other.status_code == 422
        assert other.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
        assert single.status_code == 201
        assert await count_items(client, token) == 3

    async def test_creates_all(
        self, client: AsyncClient, engine: AsyncEngine, token: str
    ) -> None:
        response = await client.post(
            f"{ITEMS}/bulk",
            json={"items": [{"title": f"b{i}"} for i in range(100)]},
            headers=bearer(token),
        )
        assert response.status_code == 201
        created = response.json()["data"]
        assert [item["title"] for item in created] == [f"b{i}" for i in range(100)]
        assert await count_items(client, token) == 100
        # Each item has its audit row and its event, written in the same commit.
        audited = await audit_rows(engine, action="item.create")
        assert sorted(row["entity_id"] for row in audited) == sorted(
            str(item["id"]) for item in created
        )
        assert len(await outbox_rows(engine)) == 100

    @pytest.mark.parametrize(
        "items",
        [
            [{"title": "ok"}, {"title": ""}, {"title": "ok too"}],
            [{"title": "ok"}, {"title": "x", "owner_id": 1}],
            [{"title": f"b{i}"} for i in range(101)],
            [],
        ],
    )
    async def test_one_invalid_item_means_none_are_created(
        self, client: AsyncClient, token: str, items: list[dict[str, Any]]
    ) -> None:
        response = await client.post(
            f"{ITEMS}/bulk", json={"items": items}, headers=bearer(token)
        )
        assert response.status_code == 422
        assert await count_items(client, token) == 0


async def outbox_rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    """The outbox's item events, oldest first, with each payload decoded."""
    async with engine.connect() as connection:
        result = await connection.execute(
            select(OutboxEvent.event_type, OutboxEvent.payload)
            .where(OutboxEvent.aggregate_type == "item")
            .order_by(OutboxEvent.id)
        )
        return [{"type": row.event_type, **row.payload} for row in result]


def principal_of(user: User) -> Principal:
    """The principal a token of `user` with every item scope would give."""
    return Principal(
        user_id=user.id,
        email=user.email,
        role=user.role,
        scopes=frozenset({"items:read", "items:write"}),
        first_name=user.first_name,
        last_name=user.last_name,
        desired_name=user.desired_name,
        session_id=None,
    )


class TestConcurrentCreates:
    """Creates that arrive together share a commit; each keeps its own rows."""

    async def test_each_create_keeps_its_owner_audit_row_and_event(
        self, app: Any, client: AsyncClient, engine: AsyncEngine
    ) -> None:
        users = {name: await make_user(app, name) for name in ("bob", "carol")}
        tokens = {name: (await login(client, name))["access_token"] for name in users}
        commits: list[object] = []

        def count_commit(_connection: object) -> None:
            commits.append(_connection)

        sent = [(name, n) for name in users for n in range(10)]
        event.listen(engine.sync_engine, "commit", count_commit)
        try:
            responses = await asyncio.gather(
                *(
                    client.post(
                        ITEMS,
                        json={"title": f"{name} {n}"},
                        headers={**bearer(tokens[name]), "X-Request-ID": f"{name}-{n}"},
                    )
                    for name, n in sent
                )
            )
        finally:
            event.remove(engine.sync_engine, "commit", count_commit)

        assert [response.status_code for response in responses] == [201] * 20
        created = [response.json()["data"] for response in responses]
        assert len({item["id"] for item in created}) == 20
        for (name, n), item, response in zip(sent, created, responses, strict=True):
            assert item["title"] == f"{name} {n}"
            assert item["owner_id"] == users[name].id
            assert response.headers["location"] == f"{ITEMS}/{item['id']}"
            [audited] = await audit_rows(
                engine, entity_type="item", entity_id=str(item["id"])
            )
            assert audited["action"] == "item.create"
            assert audited["actor_id"] == users[name].id
            assert audited["request_id"] == f"{name}-{n}"
        events = await outbox_rows(engine)
        assert sorted(e["item_id"] for e in events) == sorted(i["id"] for i in created)
        assert {e["type"] for e in events} == {"item.created"}
        # Twenty creates, far fewer transactions (logins and lookups included).
        assert len(commits) < 10

    async def test_a_create_that_fails_leaves_the_others_created(
        self, app: Any, client: AsyncClient, engine: AsyncEngine, alice: User
    ) -> None:
        creator: ItemCreator = app.state.item_creator
        owner = principal_of(alice)
        # No such user: the foreign key refuses this one item, in any batch.
        ghost = replace(owner, user_id=alice.id + 1000)
        results = await asyncio.gather(
            creator.create(owner, ItemCreate(title="first")),
            creator.create(ghost, ItemCreate(title="refused")),
            creator.create(owner, ItemCreate(title="last")),
            return_exceptions=True,
        )

        assert isinstance(results[1], IntegrityError)
        kept = [result for result in results if isinstance(result, CreatedItem)]
        assert [created.item.title for created in kept] == ["first", "last"]
        # The retries run side by side: their rows may land in either order.
        kept_ids = sorted(created.item.id for created in kept)
        audited = await audit_rows(engine, action="item.create")
        assert sorted(int(row["entity_id"]) for row in audited) == kept_ids
        events = await outbox_rows(engine)
        assert sorted(event["item_id"] for event in events) == kept_ids

    async def test_a_batch_whose_commit_may_have_happened_is_not_created_again(
        self,
        app: Any,
        client: AsyncClient,
        engine: AsyncEngine,
        alice: User,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        creator: ItemCreator = app.state.item_creator
        owner = principal_of(alice)
        real_commit = AsyncSession.commit
        failures = [OperationalError("COMMIT", {}, OSError("disk I/O error"))]

        async def commit_then_fail(session: AsyncSession) -> None:
            await real_commit(session)  # the rows are in...
            if failures:
                raise failures.pop()  # ...and then the error (e.g. a checkpoint)

        monkeypatch.setattr(AsyncSession, "commit", commit_then_fail)
        results = await asyncio.gather(
            *(creator.create(owner, ItemCreate(title=t)) for t in ("a", "b", "c")),
            return_exceptions=True,
        )

        # Each caller hears that the outcome is unknown, and why...
        assert all(isinstance(result, OutcomeUnknownError) for result in results)
        assert all(isinstance(r.__cause__, OperationalError) for r in results)
        # ...and nothing was created twice by running the batch's items again.
        async with engine.connect() as connection:
            titles = (await connection.execute(text("SELECT title FROM items"))).all()
        assert sorted(title for (title,) in titles) == ["a", "b", "c"]
        assert len(await audit_rows(engine, action="item.create")) == 3

    async def test_a_connection_lost_during_the_commit_is_no_invitation_to_retry(
        self,
        client: AsyncClient,
        engine: AsyncEngine,
        token: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        real_commit = AsyncSession.commit
        lost = OperationalError(
            "COMMIT", {}, ConnectionResetError("reset"), connection_invalidated=True
        )
        failures = [lost]

        async def commit_then_lose_the_connection(session: AsyncSession) -> None:
            await real_commit(session)  # the row is in, the answer never came
            if failures:
                raise failures.pop()

        monkeypatch.setattr(AsyncSession, "commit", commit_then_lose_the_connection)
        response = await client.post(
            ITEMS, json={"title": "maybe"}, headers=bearer(token)
        )

        # Not "503, retry later": a retry without an Idempotency-Key would
        # create the item a second time.
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "OUTCOME_UNKNOWN"
        assert "Retry-After" not in response.headers
        async with engine.connect() as connection:
            count = (
                await connection.execute(text("SELECT count(*) FROM items"))
            ).scalar()
        assert count == 1


class TestAttachments:
    async def upload(
        self,
        client: AsyncClient,
        token: str,
        item_id: int,
        name: str,
        data: bytes,
        declared: str = "application/octet-stream",
    ) -> Any:
        return await client.post(
            f"{ITEMS}/{item_id}/attachments",
            files={"file": (name, data, declared)},
            headers=bearer(token),
        )

    async def item(self, client: AsyncClient, token: str) -> int:
        response = await client.post(
            ITEMS, json={"title": "with files"}, headers=bearer(token)
        )
        item_id: int = response.json()["data"]["id"]
        return item_id

    async def test_upload_download_delete(
        self, client: AsyncClient, token: str, settings: Settings
    ) -> None:
        item_id = await self.item(client, token)
        uploaded = await self.upload(
            client, token, item_id, "report.pdf", PDF, "text/plain"
        )

        assert uploaded.status_code == 201
        meta = uploaded.json()["data"]
        assert (meta["filename"], meta["content_type"], meta["size"]) == (
            "report.pdf",
            "application/pdf",
            len(PDF),
        )
        url = f"{ITEMS}/{item_id}/attachments/{meta['id']}"
        download = await client.get(url, headers=bearer(token))
        assert download.status_code == 200
        assert download.content == PDF
        assert download.headers["content-type"] == "application/pdf"
        assert download.headers["content-disposition"].startswith(
            'attachment; filename="report.pdf"'
        )
        assert download.headers["x-content-type-options"] == "nosniff"
        listed = await client.get(
            f"{ITEMS}/{item_id}/attachments", headers=bearer(token)
        )
        assert [a["id"] for a in listed.json()["data"]] == [meta["id"]]

        assert (await client.delete(url, headers=bearer(token))).status_code == 204
        assert (await client.get(url, headers=bearer(token))).status_code == 404
        assert not [p for p in Path(settings.STORAGE_DIR).iterdir() if p.is_file()]

    async def test_concurrent_deletes_of_one_file_delete_and_audit_it_once(
        self,
        client: AsyncClient,
        token: str,
        engine: AsyncEngine,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        item_id = await self.item(client, token)
        meta = (await self.upload(client, token, item_id, "r.pdf", PDF)).json()["data"]
        _slow_down(monkeypatch, AttachmentRepository, "delete")
        url = f"{ITEMS}/{item_id}/attachments/{meta['id']}"

        answers = await asyncio.gather(
            *(client.delete(url, headers=bearer(token)) for _ in range(3))
        )

        assert sorted(answer.status_code for answer in answers) == [204, 404, 404]
        assert len(await audit_rows(engine, action="attachment.delete")) == 1

    async def test_an_upload_racing_the_items_delete_leaves_no_file(
        self,
        client: AsyncClient,
        token: str,
        settings: Settings,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        item_id = await self.item(client, token)
        # The delete has read the item's files and waits before deleting it.
        _slow_down(monkeypatch, ItemRepository, "delete")

        deleted, uploaded = await asyncio.gather(
            client.delete(f"{ITEMS}/{item_id}", headers=bearer(token)),
            self.upload(client, token, item_id, "late.pdf", PDF),
        )

        assert deleted.status_code == 204
        assert uploaded.status_code == 404  # not a 201 for a file nobody can reach
        assert not [p for p in Path(settings.STORAGE_DIR).iterdir() if p.is_file()]

    async def test_a_hard_deleted_owner_takes_their_files_along(
        self,
        client: AsyncClient,
        token: str,
        settings: Settings,
        admin: User,
        bob_token: str,
    ) -> None:
        for owner_token in (token, token, bob_token):
            item_id = await self.item(client, owner_token)
            uploaded = await self.upload(client, owner_token, item_id, "r.pdf", PDF)
            assert uploaded.status_code == 201
        root = (await login(client, "root"))["access_token"]
        me = await client.get("/api/v1/users/me", headers=bearer(token))

        deleted = await client.delete(
            f"/api/v1/users/{me.json()['data']['id']}?hard=true", headers=bearer(root)
        )

        assert deleted.status_code == 204
        # Only bob's file is left on disk.
        assert (
            len([p for p in Path(settings.STORAGE_DIR).iterdir() if p.is_file()]) == 1
        )

    @pytest.mark.parametrize(
        ("data", "declared"),
        [
            (
                b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 100,
                "image/png",
            ),  # a Windows exe
            (b"\x7fELF\x02\x01\x01" + b"\x00" * 100, "application/pdf"),
            (b"<svg onload=alert(1)>" + b"\x00\xff" * 10, "image/svg+xml"),
        ],
    )
    async def test_spoofed_content_types_are_refused(
        self, client: AsyncClient, token: str, data: bytes, declared: str
    ) -> None:
        item_id = await self.item(client, token)
        response = await self.upload(
            client, token, item_id, "innocent.png", data, declared
        )
        assert response.status_code == 415
        assert response.json()["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"

    async def test_declared_type_is_ignored_for_real_images(
        self, client: AsyncClient, token: str
    ) -> None:
        item_id = await self.item(client, token)
        response = await self.upload(
            client, token, item_id, "pic.txt", PNG, "text/html"
        )
        assert response.json()["data"]["content_type"] == "image/png"

    @pytest.mark.parametrize(
        ("name", "stored"),
        [
            ("../../etc/passwd", "passwd"),
            ("..\\..\\windows\\win.ini", "win.ini"),
            ("/abs/path/photo.png", "photo.png"),
            ("....", "file"),
            ("résumé<>:|.txt", "resume_.txt"),
            (".hidden", "hidden"),
        ],
    )
    async def test_file_names_are_sanitised(
        self,
        client: AsyncClient,
        token: str,
        settings: Settings,
        name: str,
        stored: str,
    ) -> None:
        item_id = await self.item(client, token)
        response = await self.upload(client, token, item_id, name, b"plain text")
        assert response.status_code == 201
        assert response.json()["data"]["filename"] == stored
        # Only server-chosen keys exist on disk, inside the storage directory.
        names = os.listdir(settings.STORAGE_DIR)
        assert all(entry.isalnum() for entry in names)

    async def test_size_limit_is_413_and_stores_nothing(
        self, database_url: str, tmp_path: Path
    ) -> None:
        settings = make_settings(
            DATABASE_URL=database_url,
            STORAGE_DIR=str(tmp_path),
            ATTACHMENT_MAX_BYTES=2048,
        )
        app = create_app(settings)
        async with AsyncClient(
            transport=ASGITransport(app=app), base_url="http://t"
        ) as http:
            await make_user(app, "uploader")
            token = (await login(http, "uploader"))["access_token"]
            item_id = await self.item(http, token)
            just_right = await self.upload(http, token, item_id, "a.txt", b"a" * 2048)
            too_big = await self.upload(http, token, item_id, "b.txt", b"a" * 2049)
            far_too_big = await self.upload(
                http, token, item_id, "c.txt", b"a" * 200_000
            )
        await app.state.database.dispose()

        assert just_right.status_code == 201
        assert too_big.status_code == 413
        assert far_too_big.status_code == 413
        assert far_too_big.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert len(list(tmp_path.iterdir())) == 1

    async def test_others_cannot_see_or_delete_files(
        self, app: Any, client: AsyncClient, token: str
    ) -> None:
        item_id = await self.item(client, token)
        meta = (await self.upload(client, token, item_id, "a.txt", b"secret")).json()[
            "data"
        ]
        await make_user(app, "mallory")
        mallory = (await login(client, "mallory"))["access_token"]
        url = f"{ITEMS}/{item_id}/attachments/{meta['id']}"
        assert (await client.get(url, headers=bearer(mallory))).status_code == 404
        assert (await client.delete(url, headers=bearer(mallory))).status_code == 404
        upload = await self.upload(client, mallory, item_id, "x.txt", b"x")
        assert upload.status_code == 404

    async def test_deleting_the_item_removes_its_files(
        self, client: AsyncClient, token: str, settings: Settings
    ) -> None:
        item_id = await self.item(client, token)
        await self.upload(client, token, item_id, "a.txt", b"one")
        await self.upload(client, token, item_id, "b.png", PNG)
        assert (
            await client.delete(f"{ITEMS}/{item_id}", headers=bearer(token))
        ).status_code == 204
        assert not [p for p in Path(settings.STORAGE_DIR).iterdir() if p.is_file()]
