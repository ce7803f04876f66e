"""The Temporal worker on a real dev server (loopback), with real worker processes."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("temporalio", reason="the temporal extra is not installed")

from temporal_server import DevServer, temporal_server

__all__ = ["temporal_server"]  # the fixture, used by name


def test_the_dev_server_accepts_a_client(temporal_server: DevServer) -> None:
    from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

    async def ask() -> str:
        client = await temporal_server.client()
        info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
        return info.server_version

    assert asyncio.run(ask())
    assert temporal_server.address.startswith("127.0.0.1:")
