"""The S3 filesystem Tune writes through, from the driver and from every trial: a request that
cannot reach the store (connection refused or dropped, a timeout) is tried again until
`patience` seconds have passed, rather than after botocore's few quick retries.

Without it an outage of a few seconds (an S3 gateway restarting, MinIO upgraded) fails every
trial that reports a checkpoint meanwhile, and each failure spends one of its retries. The
driver watches the store itself and stops the sweep, resumably, when it stays away for the
sweep's `storage_patience_s` (satune.tune.driver); trials wait a little longer than that, so they
are stopped by the sweep, never failed by the outage.
"""

from __future__ import annotations

import asyncio
import time

from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError
from s3fs import S3FileSystem

UNREACHABLE = (BotoConnectionError, HTTPClientError)  # refused, unreachable, dropped, timed out


class GaveUp(BotoConnectionError):
    """A request not sent: the sweep stopped waiting for the store (and said so, in one line)."""


class PatientS3FileSystem(S3FileSystem):
    """s3fs with a time bound on unreachable-store errors. `patience` is one of its storage
    options, so the filesystem Tune pickles to each trial keeps it."""

    # Set in the driver once the sweep stops because the store is away: every copy in this process
    # (Tune copies the filesystem it is given) fails at once from then on; trials are stopped.
    given_up = False

    def __init__(self, *args, patience: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.patience = patience

    async def _call_s3(self, method, *akwarglist, **kwargs):
        first, pause = None, 0.5
        while True:
            if PatientS3FileSystem.given_up:  # (not even tried: botocore's own retries take seconds)
                raise GaveUp(error="the sweep stopped waiting for the object store")
            try:
                return await super()._call_s3(method, *akwarglist, **kwargs)
            except UNREACHABLE:
                first = first or time.monotonic()
                left = first + self.patience - time.monotonic()
                if left <= 0:
                    raise
                await asyncio.sleep(min(pause, left))
                pause = min(2 * pause, 5.0)
