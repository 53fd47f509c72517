"""What the routes work with: the run history, the artifact store, the server's tables, the secrets key.

One ``Services`` per app (``app.state.services``), made by ``create_app`` and closed when the app stops.
Routes reach it with the ``services`` dependency.
"""

from __future__ import annotations

import dataclasses

from fastapi import Request

from rundock.history.artifacts import ArtifactStore
from rundock.history.store import RunStore
from rundock.server.access import BlobAccess
from rundock.server.auth import TokenCache
from rundock.server.crypto import SecretBox
from rundock.server.pools import Pools
from rundock.server.settings import ServerSettings
from rundock.server.state import ServerState
from rundock.server.uploads import Uploads


@dataclasses.dataclass
class Services:
    settings: ServerSettings
    store: RunStore
    artifacts: ArtifactStore
    state: ServerState
    box: SecretBox
    tokens: TokenCache
    blob_access: BlobAccess
    uploads: Uploads
    history_id: str
    pools: Pools

    def close(self) -> None:
        try:
            self.store.close()
        finally:
            self.state.close()


async def services(request: Request) -> Services:
    """The app's services (a dependency; async so that it costs no trip to the threadpool)."""
    found: Services = request.app.state.services
    return found
