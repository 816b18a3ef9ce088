"""Items: creation, validation, ownership, lists, filters, sorting, versions."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import Item, User
from app.schemas.item import ItemPublic
from tests.conftest import audit_rows, bearer, login, make_user
from tests.helpers import recorded_statements

ITEMS = "/api/v1/items"


@pytest.fixture
async def token(client: AsyncClient, alice: User) -> str:
    return str((await login(client, "alice"))["access_token"])


async def create(client: AsyncClient, token: str, **body: Any) -> dict[str, Any]:
    response = await client.post(
        ITEMS, json={"title": "Item", **body}, headers=bearer(token)
    )
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def test_create_returns_the_item_with_etag_and_tracking_names(
    client: AsyncClient, token: str, alice: User
) -> None:
    response = await client.post(
        ITEMS,
        json={"title": "  Notebook ", "description": "Grid paper", "status": "active"},
        headers=bearer(token),
    )

    assert response.status_code == 201
    item = response.json()["data"]
    assert response.headers["etag"] == '"1"'
    assert response.headers["location"] == f"{ITEMS}/{item['id']}"
    assert item["title"] == "Notebook"
    assert (item["status"], item["version"], item["owner_id"]) == (
        "active",
        1,
        alice.id,
    )
    assert item["created_by_id"] == item["updated_by_id"] == alice.id
    assert item["created_by_name"] == item["updated_by_name"] == "Alice Liddell"


async def test_tracking_name_prefers_desired_name(
    client: AsyncClient, token: str
) -> None:
    await client.patch(
        "/api/v1/users/me", json={"desired_name": "Ally"}, headers=bearer(token)
    )
    item = await create(client, token)
    assert item["created_by_name"] == "Ally"


@pytest.mark.parametrize(
    "body",
    [
        {"title": ""},
        {"title": "   "},
        {"title": "x" * 101},
        {"title": "ok", "description": "x" * 501},
        {"title": "ok", "status": "deleted"},
        {"title": "ok", "owner_id": 99},
        {"title": "ok", "version": 7},
        {},
    ],
)
async def test_invalid_items_are_422(
    client: AsyncClient, token: str, body: dict[str, Any]
) -> None:
    response = await client.post(ITEMS, json=body, headers=bearer(token))
    assert response.status_code == 422
    listed = await client.get(ITEMS, headers=bearer(token))
    assert listed.json()["data"]["total"] == 0


async def test_scopes_are_required(client: AsyncClient, alice: User) -> None:
    read_only = (await login(client, "alice", scope="items:read"))["access_token"]
    assert (await client.get(ITEMS, headers=bearer(read_only))).status_code == 200
    denied = await client.post(ITEMS, json={"title": "x"}, headers=bearer(read_only))
    assert denied.status_code == 403
    assert (await client.get(ITEMS)).status_code == 401


# role, whose item, verb -> status
MATRIX = [
    ("user", "own", "GET", 200),
    ("user", "own", "PATCH", 200),
    ("user", "own", "DELETE", 204),
    ("user", "other", "GET", 404),
    ("user", "other", "PATCH", 404),
    ("user", "other", "DELETE", 404),
    ("moderator", "own", "GET", 200),
    ("moderator", "own", "PATCH", 200),
    ("moderator", "own", "DELETE", 204),
    ("moderator", "other", "GET", 200),
    ("moderator", "other", "PATCH", 200),
    ("moderator", "other", "DELETE", 403),
    ("admin", "own", "GET", 200),
    ("admin", "own", "PATCH", 200),
    ("admin", "own", "DELETE", 204),
    ("admin", "other", "GET", 200),
    ("admin", "other", "PATCH", 200),
    ("admin", "other", "DELETE", 204),
]


@pytest.mark.parametrize(("role", "whose", "verb", "expected"), MATRIX)
async def test_ownership_matrix(
    app: Any, client: AsyncClient, role: str, whose: str, verb: str, expected: int
) -> None:
    await make_user(app, "actor", role=role)
    await make_user(app, "owner")
    actor = (await login(client, "actor"))["access_token"]
    owner = (await login(client, "owner"))["access_token"]
    item = await create(client, actor if whose == "own" else owner)
    url = f"{ITEMS}/{item['id']}"

    if verb == "PATCH":
        response = await client.patch(
            url, json={"title": "changed"}, headers=bearer(actor)
        )
    else:
        response = await client.request(verb, url, headers=bearer(actor))

    assert response.status_code == expected, response.text
    if expected == 404:
        assert response.json()["error"]["code"] == "NOT_FOUND"
    after = await client.get(url, headers=bearer(owner if whose == "other" else actor))
    changed = verb in {"PATCH", "DELETE"} and expected < 300
    if verb == "DELETE":
        assert after.status_code == (404 if changed else 200)
    elif verb == "PATCH":
        assert after.json()["data"]["title"] == ("changed" if changed else "Item")


async def test_moderator_edit_records_the_editor(app: Any, client: AsyncClient) -> None:
    await make_user(app, "mod", role="moderator", first_name="Mo", last_name="Derator")
    await make_user(app, "owner")
    owner = (await login(client, "owner"))["access_token"]
    moderator = (await login(client, "mod"))["access_token"]
    item = await create(client, owner)

    patched = await client.patch(
        f"{ITEMS}/{item['id']}", json={"status": "archived"}, headers=bearer(moderator)
    )

    data = patched.json()["data"]
    assert data["updated_by_name"] == "Mo Derator"
    assert data["created_by_name"] == "Test User"
    assert data["owner_id"] == item["owner_id"]


async def test_patch_answers_the_stored_item_and_audits_only_what_changed(
    client: AsyncClient, token: str, engine: AsyncEngine
) -> None:
    item = await create(client, token, description="kept")
    url = f"{ITEMS}/{item['id']}"

    with time_machine.travel(timedelta(seconds=5), tick=True):
        patched = await client.patch(
            url, json={"title": "new", "description": "kept"}, headers=bearer(token)
        )
    again = await client.patch(url, json={"title": "new"}, headers=bearer(token))

    stored = (await client.get(url, headers=bearer(token))).json()["data"]
    assert patched.status_code == again.status_code == 200
    assert patched.headers["etag"] == again.headers["etag"] == '"2"'
    assert patched.json()["data"] == again.json()["data"] == stored
    assert (stored["title"], stored["description"], stored["version"]) == (
        "new",
        "kept",
        2,
    )
    assert stored["created_at"] == item["created_at"]
    updated_at = datetime.fromisoformat(stored["updated_at"])
    assert updated_at > datetime.fromisoformat(item["updated_at"])
    [row] = await audit_rows(engine, action="item.update")  # none for the no-op
    changes = row["changed_fields"]
    if isinstance(changes, str):  # SQLite returns JSON text through raw SQL
        changes = json.loads(changes)
    assert changes == {"title": {"old": "Item", "new": "new"}}


async def test_patch_is_four_statements_whatever_it_changes(
    client: AsyncClient, token: str, engine: AsyncEngine
) -> None:
    item = await create(client, token)
    url = f"{ITEMS}/{item['id']}"
    await client.get(url, headers=bearer(token))  # the access check is cached now

    with recorded_statements(engine) as statements:
        response = await client.patch(
            url,
            json={"title": "t", "description": "d", "status": "active"},
            headers={**bearer(token), "If-Match": '"1"'},
        )

    assert response.status_code == 200
    # Read the item, change it (version check included), audit row, outbox row.
    verbs = [statement.split(None, 1)[0].upper() for statement in statements]
    assert verbs == ["SELECT", "UPDATE", "INSERT", "INSERT"]


@pytest.mark.parametrize(
    ("role", "expected"), [("user", 403), ("moderator", 200), ("admin", 200)]
)
async def test_list_a_users_items(
    app: Any, client: AsyncClient, role: str, expected: int
) -> None:
    owner = await make_user(app, "owner")
    await make_user(app, "viewer", role=role)
    owner_token = (await login(client, "owner"))["access_token"]
    for index in range(3):
        await create(client, owner_token, title=f"o{index}")
    viewer = (await login(client, "viewer"))["access_token"]

    response = await client.get(
        f"/api/v1/users/{owner.id}/items", headers=bearer(viewer)
    )

    assert response.status_code == expected
    if expected == 200:
        assert response.json()["data"]["total"] == 3


class TestLists:
    async def test_empty_list(self, client: AsyncClient, token: str) -> None:
        data = (await client.get(ITEMS, headers=bearer(token))).json()["data"]
        assert data == {
            "items": [],
            "total": 0,
            "limit": 20,
            "offset": 0,
            "next_cursor": None,
        }

    async def test_items_read_are_rendered_exactly_as_pydantic_renders_them(
        self, app: Any, client: AsyncClient, token: str
    ) -> None:
        # The database renders list rows and single items as JSON; they must
        # match pydantic's rendering of the stored row byte for byte: escapes,
        # nulls, and timestamps with and without microseconds.
        titles = ['quote " and \\ back', "tab\tnew\nline", "Ünïcode ✓ 🚀", "</script>"]
        # Within the token's lifetime, on a whole second.
        second = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
        moments = [
            second,
            second.replace(microsecond=120000),
            second.replace(microsecond=7),
            second.replace(microsecond=999999) + timedelta(seconds=1),
        ]
        for title, moment in zip(titles, moments, strict=True):
            with time_machine.travel(moment, tick=False):
                await create(client, token, title=title, description=None)
        with time_machine.travel(moments[0] + timedelta(minutes=1), tick=False):
            await create(client, token, title="described", description="d \u00e9")

        for url in (ITEMS, "/api/v2/items"):
            listed = await client.get(url, headers=bearer(token))
            for item in listed.json()["data"]["items"]:
                single = await client.get(
                    f"{ITEMS}/{item['id']}", headers=bearer(token)
                )
                assert item == single.json()["data"]
                rendered = single.content.decode().split('"data":', 1)[1][:-1]
                assert rendered in listed.content.decode()
                async with app.state.database.sessionmaker() as session:
                    stored = await session.get(Item, item["id"])
                assert rendered == ItemPublic.model_validate(stored).model_dump_json()
        stamps = [item["created_at"] for item in listed.json()["data"]["items"]]
        whole = second.strftime("%Y-%m-%dT%H:%M:%S")
        assert {f"{whole}Z", f"{whole}.120000Z", f"{whole}.000007Z"} <= set(stamps)

    async def test_only_my_items_are_listed(
        self, app: Any, client: AsyncClient, token: str
    ) -> None:
        await make_user(app, "bob")
        bob = (await login(client, "bob"))["access_token"]
        await create(client, bob, title="bob's")
        mine = await create(client, token, title="mine")
        data = (await client.get(ITEMS, headers=bearer(token))).json()["data"]
        assert [item["id"] for item in data["items"]] == [mine["id"]]

    async def test_offset_pages_and_last_page(
        self, client: AsyncClient, token: str
    ) -> None:
        created = [await create(client, token, title=f"t{i}") for i in range(5)]
        newest_first = [item["id"] for item in reversed(created)]

        first = (await client.get(f"{ITEMS}?limit=2", headers=bearer(token))).json()[
            "data"
        ]
        last = (
            await client.get(f"{ITEMS}?limit=2&offset=4", headers=bearer(token))
        ).json()["data"]
        beyond = (
            await client.get(f"{ITEMS}?limit=2&offset=10", headers=bearer(token))
        ).json()["data"]

        assert [i["id"] for i in first["items"]] == newest_first[:2]
        assert first["total"] == 5
        assert [i["id"] for i in last["items"]] == newest_first[4:]
        assert last["next_cursor"] is None
        assert beyond["items"] == []
        assert beyond["total"] == 5  # counted on its own: no row carries it

    @pytest.mark.parametrize(
        ("sort", "order"),
        [
            ("created_at", "desc"),
            ("created_at", "asc"),
            ("title", "asc"),
            ("title", "desc"),
            ("updated_at", "desc"),
        ],
    )
    async def test_cursor_walk_visits_every_item_once_in_order(
        self, client: AsyncClient, token: str, sort: str, order: str
    ) -> None:
        titles = ["pear", "apple", "fig", "apple", "kiwi", "date", "fig"]
        for title in titles:
            await create(client, token, title=title)
        seen: list[dict[str, Any]] = []
        url = f"{ITEMS}?limit=3&sort={sort}&order={order}"
        cursor = None
        while True:
            page = (
                await client.get(
                    url + (f"&cursor={cursor}" if cursor else ""), headers=bearer(token)
                )
            ).json()["data"]
            seen += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        keys = [(item[sort], item["id"]) for item in seen]
        assert len({item["id"] for item in seen}) == len(titles) == len(seen)
        assert keys == sorted(keys, reverse=order == "desc")

    async def test_cursor_stays_correct_after_deletes(
        self, client: AsyncClient, token: str
    ) -> None:
        ids = [(await create(client, token, title=f"t{i}"))["id"] for i in range(6)]
        first = (await client.get(f"{ITEMS}?limit=2", headers=bearer(token))).json()[
            "data"
        ]
        # Delete the last row of page one and the first row of page two.
        for item_id in (ids[4], ids[3]):
            assert (
                await client.delete(f"{ITEMS}/{item_id}", headers=bearer(token))
            ).status_code == 204
        second = (
            await client.get(
                f"{ITEMS}?limit=2&cursor={first['next_cursor']}", headers=bearer(token)
            )
        ).json()["data"]
        assert [i["id"] for i in second["items"]] == [ids[2], ids[1]]

    async def test_filters(self, client: AsyncClient, token: str) -> None:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        for day, (title, status) in enumerate(
            [
                ("Red apple", "active"),
                ("green APPLE", "draft"),
                ("banana", "active"),
                ("100% juice", "archived"),
            ]
        ):
            with time_machine.travel(start + timedelta(days=day)):
                then = (await login(client, "alice"))["access_token"]  # valid then
                await create(client, then, title=title, status=status)

        async def titles(query: str) -> list[str]:
            page = (
                await client.get(
                    f"{ITEMS}?sort=title&order=asc&{query}", headers=bearer(token)
                )
            ).json()
            return [item["title"] for item in page["data"]["items"]]

        assert await titles("status=active") == ["Red apple", "banana"]
        assert await titles("q=apple") == ["Red apple", "green APPLE"]
        assert await titles("q=apple&status=draft") == ["green APPLE"]
        assert await titles("q=100%25") == ["100% juice"]
        assert await titles("q=%25") == ["100% juice"]  # % is literal
        assert await titles("created_after=2026-01-02T00:00:00Z") == [
            "100% juice",
            "banana",
            "green APPLE",
        ]
        assert await titles(
            "created_after=2026-01-02T00:00:00Z&created_before=2026-01-03T00:00:00Z"
        ) == ["green APPLE"]

    @pytest.mark.parametrize(
        "query",
        [
            "sort=owner_id",
            "order=sideways",
            "limit=0",
            "limit=101",
            "offset=-1",
            "status=deleted",
            "cursor=not-a-cursor",
            "created_after=yesterday",
        ],
    )
    async def test_bad_list_queries_are_422(
        self, client: AsyncClient, token: str, query: str
    ) -> None:
        response = await client.get(f"{ITEMS}?{query}", headers=bearer(token))
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"

    async def test_cursor_of_another_ordering_is_rejected(
        self, client: AsyncClient, token: str
    ) -> None:
        for index in range(3):
            await create(client, token, title=f"t{index}")
        cursor = (await client.get(f"{ITEMS}?limit=1", headers=bearer(token))).json()[
            "data"
        ]["next_cursor"]
        response = await client.get(
            f"{ITEMS}?limit=1&sort=title&cursor={cursor}", headers=bearer(token)
        )
        assert response.status_code == 422
        assert response.json()["error"]["details"][0]["field"] == "query.cursor"

    async def test_statement_count_does_not_grow_with_page_size(
        self, client: AsyncClient, token: str, engine: AsyncEngine
    ) -> None:
        await client.post(
            f"{ITEMS}/bulk",
            json={"items": [{"title": f"t{i}"} for i in range(60)]},
            headers=bearer(token),
        )

        async def statements_for(query: str) -> int:
            with recorded_statements(engine) as statements:
                response = await client.get(f"{ITEMS}?{query}", headers=bearer(token))
            assert response.status_code == 200
            return len(statements)

        small = await statements_for("limit=5")
        large = await statements_for("limit=50")
        cursor = (await client.get(f"{ITEMS}?limit=5", headers=bearer(token))).json()[
            "data"
        ]["next_cursor"]
        deep = await statements_for(f"limit=50&cursor={cursor}")
        assert small == large == deep
        assert large <= 2  # principal check, page with its total


class TestVersions:
    async def test_v1_list_is_deprecated_with_a_successor(
        self, client: AsyncClient, token: str
    ) -> None:
        response = await client.get(ITEMS, headers=bearer(token))
        assert response.headers["deprecation"].startswith("@")
        assert response.headers["link"] == '</api/v2/items>; rel="successor-version"'
        assert "sunset" in response.headers

    async def test_v2_pages_by_cursor_only(
        self, client: AsyncClient, token: str
    ) -> None:
        ids = [(await create(client, token, title=f"t{i}"))["id"] for i in range(5)]
        seen: list[int] = []
        cursor = ""
        while True:
            response = await client.get(
                f"/api/v2/items?limit=2{cursor}", headers=bearer(token)
            )
            assert "deprecation" not in response.headers
            data = response.json()["data"]
            assert set(data) == {"items", "limit", "next_cursor"}
            seen += [item["id"] for item in data["items"]]
            if data["next_cursor"] is None:
                break
            cursor = f"&cursor={data['next_cursor']}"
        assert seen == list(reversed(ids))


class TestConcurrency:
    async def test_etag_flow(self, client: AsyncClient, token: str) -> None:
        item = await create(client, token)
        url = f"{ITEMS}/{item['id']}"
        etag = (await client.get(url, headers=bearer(token))).headers["etag"]
        assert etag == '"1"'

        ok = await client.patch(
            url, json={"title": "v2"}, headers={**bearer(token), "If-Match": etag}
        )
        stale = await client.patch(
            url, json={"title": "lost"}, headers={**bearer(token), "If-Match": etag}
        )
        weak = await client.patch(
            url, json={"title": "weak"}, headers={**bearer(token), "If-Match": 'W/"2"'}
        )
        star = await client.patch(
            url, json={"title": "any"}, headers={**bearer(token), "If-Match": "*"}
        )
        stale_delete = await client.delete(
            url, headers={**bearer(token), "If-Match": etag}
        )
        current = await client.get(url, headers=bearer(token))

        assert ok.status_code == 200
        assert ok.headers["etag"] == '"2"'
        assert stale.status_code == 412
        assert stale.json()["error"]["code"] == "PRECONDITION_FAILED"
        assert weak.status_code == 412
        assert star.status_code == 200
        assert stale_delete.status_code == 412
        assert current.json()["data"]["title"] == "any"
        good_delete = await client.delete(
            url, headers={**bearer(token), "If-Match": current.headers["etag"]}
        )
        assert good_delete.status_code == 204

    async def test_two_racing_patches_with_one_etag(
        self, client: AsyncClient, token: str
    ) -> None:
        item = await create(client, token)
        url = f"{ITEMS}/{item['id']}"
        headers = {**bearer(token), "If-Match": '"1"'}

        first, second = await asyncio.gather(
            client.patch(url, json={"title": "first"}, headers=headers),
            client.patch(url, json={"title": "second"}, headers=headers),
        )

        assert sorted([first.status_code, second.status_code]) == [200, 412]
        winner = first if first.status_code == 200 else second
        stored = (await client.get(url, headers=bearer(token))).json()["data"]
        assert stored["title"] == winner.json()["data"]["title"]
        assert stored["version"] == 2

    async def test_racing_patches_without_etag_never_lose_a_write_silently(
        self, client: AsyncClient, token: str
    ) -> None:
        item = await create(client, token)
        url = f"{ITEMS}/{item['id']}"

        responses = await asyncio.gather(
            *(
                client.patch(url, json={"title": f"w{i}"}, headers=bearer(token))
                for i in range(6)
            )
        )

        succeeded = [r for r in responses if r.status_code == 200]
        assert all(r.status_code in (200, 409) for r in responses)
        stored = (await client.get(url, headers=bearer(token))).json()["data"]
        # Every success produced its own version; the last one is what is stored.
        assert stored["version"] == 1 + len(succeeded)
        latest = max(succeeded, key=lambda r: r.json()["data"]["version"])
        assert stored["title"] == latest.json()["data"]["title"]


@pytest.mark.parametrize("body", [{"title": None}, {"status": None}])
async def test_required_item_fields_cannot_be_nulled(
    client: AsyncClient, token: str, body: dict[str, Any]
) -> None:
    item = await create(client, token, description="kept")
    response = await client.patch(
        f"{ITEMS}/{item['id']}", json=body, headers=bearer(token)
    )
    assert response.status_code == 422
    cleared = await client.patch(
        f"{ITEMS}/{item['id']}", json={"description": None}, headers=bearer(token)
    )
    assert cleared.status_code == 200
    assert cleared.json()["data"]["description"] is None


@pytest.mark.parametrize(
    "path", ["/api/v1/items/{}", "/api/v1/users/{}", "/api/v1/users/{}/items"]
)
async def test_out_of_range_ids_are_422_not_500(
    client: AsyncClient, admin: User, path: str
) -> None:
    token = (await login(client, "root"))["access_token"]
    response = await client.get(path.format(2**70), headers=bearer(token))
    assert response.status_code == 422


NUL = "\x00"


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("POST", ITEMS, {"title": NUL + "x"}),
        ("POST", f"{ITEMS}/bulk", {"items": [{"title": "ok"}, {"title": "a" + NUL}]}),
        ("GET", f"{ITEMS}?q=%00", None),
        ("PATCH", "/api/v1/users/me", {"first_name": "Al" + NUL}),
    ],
)
async def test_nul_characters_are_422_not_500(
    client: AsyncClient, token: str, method: str, url: str, body: Any
) -> None:
    response = await client.request(method, url, json=body, headers=bearer(token))
    assert response.status_code == 422
    assert "NUL" in response.text
