"""The publish tests reuse the release fixtures of tests/shards."""

from tests.shards.conftest import (  # noqa: F401 - fixtures
    release_copy,
    released_workspace,
    staged_workspace,
)
