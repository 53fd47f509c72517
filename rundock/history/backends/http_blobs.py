"""Blobs between the client's artifact cache and the team server, streamed both ways and resumable.

Sending: before a record that names blobs reaches the server (a run's file, a snapshot's manifest, a
model's files), ``BlobTransfer.ensure`` asks ``POST /blobs/missing`` which of them the server lacks and
uploads only those, from the local ``ArtifactStore`` (the client's cache). An upload first asks how much of
it the server already holds (``GET /uploads/{digest}``: an upload interrupted earlier, by this process or
another) and sends the rest from there (``PUT /uploads/{digest}?offset=N``, ``X-Rundock-Final: 1``); the
server checks the SHA-256 of the whole blob before installing it. Digests the server is known to hold are
remembered, so a busy run's later batches ask nothing.

A blob missing from both the server and the cache cannot be sent: the record still goes (as the embedded
history takes records without checking their blobs) and a warning names the blob.

Reading: ``fetch_blob`` is the cache's remote source (``ArtifactStore.remote``): it streams a blob the
cache lacks into a file, resuming with ``Range`` after a broken connection; the cache checks the SHA-256
before keeping it. Neither direction holds a whole blob in memory (packed blobs aside: they are small).
"""

from __future__ import annotations

import logging
import time
from typing import IO, Iterable
from urllib.parse import quote

import requests

from rundock.errors import StoreError, StoreUnavailableError
from rundock.history.artifacts import ArtifactStore
from rundock.history.backends.http_client import HINT, HttpClient, NotFound, Retry, ServerConflictError

log = logging.getLogger("rundock.http")

MISSING_BATCH = 1000  # digests per /blobs/missing request
_CHUNK = 1 << 20
_KNOWN_MAX = 200_000  # digests remembered as stored on the server


def _blob_not_found(url: str, digest: str) -> NotFound:
    def make(message: str) -> Exception:
        return FileNotFoundError(f"blob {digest} is neither in the local cache nor on the server {url} ({message})")
    return make


class BlobTransfer:
    """Uploads to and downloads from one server for the cache ``cache`` (None: nothing can be uploaded)."""

    def __init__(self, client: HttpClient, cache: ArtifactStore | None) -> None:
        self.client = client
        self.cache = cache
        self._known: set[str] = set()

    def __repr__(self) -> str:
        return f"BlobTransfer({self.client.url!r})"

    # -- sending -------------------------------------------------------------------------------------------------
    def ensure(self, digests: Iterable[str]) -> int:
        """Make sure the server holds every blob in ``digests``; return the bytes uploaded."""
        wanted = [d for d in dict.fromkeys(digests) if d not in self._known]
        sent = 0
        for start in range(0, len(wanted), MISSING_BATCH):
            batch = wanted[start:start + MISSING_BATCH]
            answer = self.client.json(self.client.call("POST", "/blobs/missing", body={"digests": batch},
                                                       what="asking which blobs the server lacks"),
                                      "asking which blobs the server lacks")
            missing = set(answer.get("missing") or []) if isinstance(answer, dict) else set()
            for digest in batch:
                if digest in missing:
                    if self.cache is None or not self.cache.has(digest):
                        log.warning("blob %s is neither on the server %s nor in the local cache %s: records that "
                                    "name it are sent without it", digest, self.client.url,
                                    self.cache.root if self.cache else "(none)")
                        continue
                    sent += self.upload(digest)
                self._remember(digest)
        return sent

    def _remember(self, digest: str) -> None:
        if len(self._known) >= _KNOWN_MAX:
            self._known.clear()
        self._known.add(digest)

    def offset(self, digest: str) -> int | None:
        """How many bytes of ``digest`` the server holds of an unfinished upload; None when it has the blob."""
        state = self.client.get_json(f"/uploads/{digest}", what=f"asking how much of blob {digest[:12]} the server "
                                                               "holds")
        if not isinstance(state, dict):
            raise StoreError(f"the server {self.client.url} answered GET /uploads/{digest} with {state!r}")
        if state.get("complete"):
            return None
        return int(state.get("offset") or 0)

    def upload(self, digest: str) -> int:
        """Send blob ``digest`` from the cache, from where the server's partial copy ends; return the bytes the
        completing request sent (0 when the server had it all)."""
        assert self.cache is not None
        size = self.cache.size(digest)
        deadline = time.monotonic() + self.client.retry_seconds
        pause = 0.2
        while True:
            offset = self.offset(digest)
            if offset is None:
                return 0
            if offset > size:
                raise StoreError(f"the server {self.client.url} holds {offset} bytes of blob {digest}, which has "
                                 f"{size}: its partial upload is damaged; ask its admin to check its artifacts")
            try:
                if offset == size:  # all there but not installed: an empty final request (requests would add
                    self._put(digest, offset, size, b"")  # Transfer-Encoding to an empty stream)
                else:
                    with self._open_at(digest, offset) as stream:
                        self._put(digest, offset, size, stream)
                return size - offset
            except StoreUnavailableError:  # the connection broke: the server kept what arrived
                if time.monotonic() + pause > deadline:
                    raise
            except ServerConflictError:  # another upload of it is under way, or moved the offset: ask again
                if time.monotonic() + pause > deadline:
                    raise
            except ValueError as exc:  # the server found another SHA-256: the cached blob is damaged
                raise StoreError(f"the server {self.client.url} refused blob {digest} from the cache "
                                 f"{self.cache.root}: {exc}") from None
            time.sleep(pause)
            pause = min(pause * 2, 5.0)

    def _put(self, digest: str, offset: int, size: int, body: IO[bytes] | bytes) -> None:
        self.client.call("PUT", f"/uploads/{digest}", params={"offset": offset}, data=body,
                         headers={"X-Rundock-Final": "1", "Content-Length": str(size - offset),
                                  "Content-Type": "application/octet-stream"},
                         retry=Retry.UNSENT, what=f"uploading blob {digest[:12]} ({size} bytes)",
                         read_timeout=max(self.client.read_timeout, 300.0))

    def _open_at(self, digest: str, offset: int) -> IO[bytes]:
        assert self.cache is not None
        stream = self.cache.open(digest)
        stream.seek(offset)
        return stream

    # -- reading -------------------------------------------------------------------------------------------------
    def fetch_blob(self, digest: str, target: str) -> None:
        """Write blob ``digest`` from the server to the new file ``target`` (``ArtifactStore.remote``)."""
        deadline = time.monotonic() + self.client.retry_seconds
        pause = 0.2
        written = 0
        what = f"downloading blob {digest[:12]}"
        with open(target, "wb") as out:
            while True:
                headers = {"Range": f"bytes={written}-"} if written else {}
                resp = self.client.call("GET", f"/blobs/{quote(digest, safe='')}", headers=headers, stream=True,
                                        what=what, not_found=_blob_not_found(self.client.url, digest))
                try:
                    if written and resp.status_code != 206:  # the server sent it all again
                        out.seek(0)
                        out.truncate()
                        written = 0
                    for chunk in resp.iter_content(_CHUNK):
                        out.write(chunk)
                        written += len(chunk)
                    return
                except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, requests.Timeout) as exc:
                    if time.monotonic() + pause > deadline:
                        raise StoreUnavailableError(f"the download of blob {digest} from {self.client.url} broke off "
                                                    f"after {written} bytes: {exc}. {HINT}") from None
                finally:
                    resp.close()
                time.sleep(pause)
                pause = min(pause * 2, 5.0)

    def missing_on_server(self, digests: list[str]) -> list[str]:
        """Which of ``digests`` the server lacks (no upload)."""
        answer = self.client.json(self.client.call("POST", "/blobs/missing", body={"digests": digests},
                                                   what="asking which blobs the server lacks"), "blobs/missing")
        return list(answer.get("missing") or [])
