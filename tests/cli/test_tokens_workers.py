"""Sidecar API tokens across the workers of `serve --workers 2` (docs/tokens.md): a token
created through one worker works on both, and once its revoke is answered every worker refuses
it (each worker's copy follows the tokens, and a change answers after all applied it)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from tests import workers
from tests.workers import ADMIN_TOKEN

pytestmark = pytest.mark.sql_free  # (nothing here depends on the SQL backend)

CALLS = 40  # a new connection each: the kernel spreads them over both workers


@pytest.fixture(scope="module")
def listen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One `serve --workers 2` for the module (each test makes tokens of its own)."""
    with workers.two_workers(tmp_path_factory.mktemp("workers")) as listen:
        yield listen


def statuses(listen: str, token: str) -> set[int]:
    return {workers.get(listen, "/v1/plans", token)[0] for _ in range(CALLS)}


async def test_a_token_works_on_every_worker_and_its_revoke_reaches_them_all(listen: str) -> None:
    def run() -> None:
        status, body = workers.send(
            listen, "POST", "/v1/tokens", {"name": "app", "scopes": ["read"]}, ADMIN_TOKEN
        )
        assert status == 201
        made = json.loads(body)
        assert statuses(listen, made["token"]) == {200}
        status, _ = workers.send(
            listen, "DELETE", f"/v1/tokens/{made['token_id']}", None, ADMIN_TOKEN
        )
        assert status == 200
        assert statuses(listen, made["token"]) == {401}

    await asyncio.to_thread(run)


async def test_a_rotation_reaches_every_worker_before_it_is_answered(listen: str) -> None:
    def run() -> None:
        status, body = workers.send(
            listen, "POST", "/v1/tokens", {"name": "app", "scopes": ["read"]}, ADMIN_TOKEN
        )
        made = json.loads(body)
        path = f"/v1/tokens/{made['token_id']}/rotate"
        status, body = workers.send(listen, "POST", path, {"grace_seconds": 0}, ADMIN_TOKEN)
        assert status == 200
        assert statuses(listen, json.loads(body)["token"]) == {200}
        assert statuses(listen, made["token"]) == {401}

    await asyncio.to_thread(run)
