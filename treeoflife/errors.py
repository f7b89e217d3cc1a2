"""The one error type the project raises for problems a user can fix.

The CLI prints a `TolError` without a traceback and exits non-zero; the message names
the file, row or field involved and says what to do.
"""


class TolError(Exception):
    """A user-facing failure: bad input, a failed download, a missing stage."""


class DownloadError(TolError):
    """A download failed after its retries ran out, or its bytes could not be verified."""


class ChecksumMismatch(DownloadError):
    """Downloaded bytes do not match the size or digest the manifest pins."""


class UnsafeArchiveMember(TolError):
    """An archive member name would escape the extraction folder (`../`, absolute path)."""
