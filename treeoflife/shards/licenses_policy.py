"""Which licences a release may re-host in its shards, list in its catalog only, or drop.

Applied before anything is written: ~30K TreeOfLife-10M images had to be pulled after
training because nobody checked. Patterns are fnmatch globs over canonical licence ids
(`treeoflife.licenses`); the first list that matches wins, anything unmatched is excluded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import duckdb

from treeoflife.errors import TolError

HOST = "host"  # image in the shards and the catalog
CATALOG_ONLY = "catalog-only"  # catalog row (with the source URL/ids), no image in the shards
EXCLUDE = "exclude"  # not released at all

# Redistributable with attribution (NC and SA travel with the catalog's licence column).
DEFAULT_HOST = (
    "cc0-*",
    "pdm",
    "no-known-restrictions",
    "cc-by-[0-9]*",
    "cc-by-sa-*",
    "cc-by-nc-[0-9]*",
    "cc-by-nc-sa-*",
)
# No-derivatives: a resized copy is a derivative, so list it and let users fetch the original.
DEFAULT_CATALOG_ONLY = ("cc-by-nd-*", "cc-by-nc-nd-*")


@dataclass(frozen=True)
class LicensePolicy:
    """Licence globs to host and to catalog only; sources whose images are never re-hosted
    (the original catalogued but did not re-host iNat21 and BIOSCAN images)."""

    host: tuple[str, ...] = DEFAULT_HOST
    catalog_only: tuple[str, ...] = DEFAULT_CATALOG_ONLY
    catalog_only_sources: tuple[str, ...] = ()

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> LicensePolicy:
        """From `[stages.shard]` keys `license_host`, `license_catalog_only`,
        `catalog_only_sources` (each a list of strings)."""
        return cls(
            host=_strings(options, "license_host", DEFAULT_HOST),
            catalog_only=_strings(options, "license_catalog_only", DEFAULT_CATALOG_ONLY),
            catalog_only_sources=_strings(options, "catalog_only_sources", ()),
        )

    def action(self, license_id: str | None, source: str | None = None) -> str:
        """HOST, CATALOG_ONLY or EXCLUDE for one canonical licence id."""
        lic = (license_id or "unknown").lower()
        if any(fnmatchcase(lic, pattern) for pattern in self.host):
            if source is not None and source in self.catalog_only_sources:
                return CATALOG_ONLY
            return HOST
        if any(fnmatchcase(lic, pattern) for pattern in self.catalog_only):
            return CATALOG_ONLY
        return EXCLUDE


def _strings(options: dict[str, Any], key: str, default: Sequence[str]) -> tuple[str, ...]:
    value = options.get(key, default)
    if isinstance(value, str) or not all(isinstance(item, str) for item in value):
        raise TolError(f"[stages.shard] {key} must be a list of strings, not {value!r}")
    return tuple(value)


def register_policy(
    con: duckdb.DuckDBPyConnection, policy: LicensePolicy, pairs: Iterable[tuple[str, str]]
) -> None:
    """Temp table `license_policy(source, license, action)` for the distinct pairs given."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE license_policy "
        "(source VARCHAR, license VARCHAR, action VARCHAR)"
    )
    rows = [(source, lic, policy.action(lic, source)) for source, lic in pairs]
    if rows:
        con.executemany("INSERT INTO license_policy VALUES (?, ?, ?)", rows)
