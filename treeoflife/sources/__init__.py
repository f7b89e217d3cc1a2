"""The loaders `tol pull` knows, by source name (as on the command line and in records.source)."""

from __future__ import annotations

from collections.abc import Callable

from treeoflife.sources import bioscan, eol, inat
from treeoflife.sources.loading import PullContext

LOADERS: dict[str, Callable[[PullContext], None]] = {
    "inat21": inat.load_inat21,
    "inat-open-data": inat.load_open_data,
    "bioscan-1m": bioscan.load_bioscan_1m,
    "bioscan-5m": bioscan.load_bioscan_5m,
    "eol": eol.load_eol,
}

# Bumped when a loader's output changes, so `tol pull` re-ingests unchanged downloads.
LOADER_VERSION = "1"
