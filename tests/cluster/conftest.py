"""Redis Cluster fixtures: one real local cluster (3 masters, 3 replicas) per session, flushed
before each test, and the top-level ``redis`` and ``settings`` fixtures pointed at it, so the
single-node suites imported by this directory's modules run unchanged against the cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from sidecar.redis.client import RedisClient, connect
from sidecar.settings import Settings
from tests.conftest import ADMIN, SERVICE
from tests.rediscluster import LocalCluster


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
async def redis(redis_cluster: LocalCluster) -> AsyncIterator[RedisClient]:
    redis_cluster.flush()
    client = connect(redis_cluster.url)
    yield client
    await client.aclose()


@pytest.fixture
def settings(redis_cluster: LocalCluster, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_cluster.url,
        admin_token=SecretStr(ADMIN),
        service_token=SecretStr(SERVICE),
        data_dir=tmp_path,
        writer="off",
        billing_worker="off",
    )
