"""Shared fixtures: the bundled sample served over loopback, and workspaces pulled from it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from treeoflife.http import HttpClient, HttpPolicy
from treeoflife.loopback import LoopbackServer
from treeoflife.manifest import Pipeline, load_pipeline
from treeoflife.pull import pull_source
from treeoflife.sample import SAMPLE_EXPECTED, SAMPLE_FILES
from treeoflife.workspace import Workspace


def fast_client(retries: int = 3, chunk_size: int = 8192) -> HttpClient:
    """A client with tiny backoffs (fault tests do not sleep long) and small read chunks."""
    return HttpClient(
        HttpPolicy(
            retries=retries,
            backoff_base_s=0.01,
            backoff_max_s=0.05,
            max_retry_after_s=0.1,
            chunk_size=chunk_size,
        )
    )


@pytest.fixture(scope="session")
def sample_expected() -> dict:
    return json.loads(SAMPLE_EXPECTED.read_text())


@pytest.fixture(scope="session")
def sample_pipeline() -> Pipeline:
    return load_pipeline("sample")


@pytest.fixture(scope="session")
def sample_server() -> Iterator[LoopbackServer]:
    with LoopbackServer(SAMPLE_FILES) as server:
        yield server


def pull_all(workspace: Workspace, pipeline: Pipeline, mirror: str, client=None) -> dict:
    client = client or fast_client()
    return {
        name: pull_source(workspace, manifest, client, mirror=mirror)
        for name, manifest in pipeline.sources.items()
    }


@pytest.fixture(scope="session")
def pulled_workspace(tmp_path_factory, sample_pipeline, sample_server) -> Workspace:
    """One workspace with every sample source pulled; tests must only read it."""
    workspace = Workspace(tmp_path_factory.mktemp("pulled") / "ws").init()
    pull_all(workspace, sample_pipeline, sample_server.url)
    return workspace


@pytest.fixture
def fresh_workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws").init()
