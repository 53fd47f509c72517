"""A team server's housekeeping primitives (``StoreAdmin``) over its ``/api/v1/admin`` routes (admin tokens only).

Each is one transaction on the server. Archiving, listing, pruning and reading references may be sent
twice (retried like reads); deleting is sent again only when it surely never reached the server.
"""

from __future__ import annotations

from typing import Collection, Iterable

from rundock.history.backends.http_client import HttpClient, Retry
from rundock.history.store import StoreAdmin


class HttpAdmin(StoreAdmin):
    def __init__(self, client: HttpClient) -> None:
        self.client = client

    def set_archived(self, run_ids: Iterable[str], archived: bool = True) -> list[str]:
        answer = self.client.json(self.client.call("POST", "/admin/archive",
                                                   body={"run_ids": list(run_ids), "archived": archived},
                                                   what="archiving runs"), "archive")
        return [str(r) for r in answer["run_ids"]]

    def delete_runs(self, run_ids: Iterable[str]) -> list[str]:
        answer = self.client.json(self.client.call("POST", "/admin/delete", body={"run_ids": list(run_ids)},
                                                   retry=Retry.UNSENT, what="deleting runs"), "delete")
        return [str(r) for r in answer["run_ids"]]

    def list_snapshots(self) -> dict[str, float]:
        answer = self.client.get_json("/admin/snapshots", what="listing snapshots")
        return {str(k): float(v) for k, v in answer.items()}

    def prune_snapshots(self, stored_before: float, *, dry_run: bool = False) -> list[str]:
        answer = self.client.json(self.client.call("POST", "/admin/prune-snapshots",
                                                   body={"stored_before": stored_before, "dry_run": dry_run},
                                                   what="pruning snapshots"), "prune")
        return [str(s) for s in answer["snapshot_ids"]]

    def referenced_digests(self, skip_snapshots: Collection[str] = ()) -> set[str]:
        answer = self.client.json(self.client.call("POST", "/admin/referenced-digests",
                                                   body={"skip_snapshots": list(skip_snapshots)},
                                                   what="reading the blobs the history refers to"), "digests")
        return {str(d) for d in answer["digests"]}
