"""Catching the label store up with Label Studio's API, for what webhooks missed.

`reconcile(store, source, project)` reads every current annotation of a project first
(nothing is changed if that fails), stores missed or newer ones with the webhook's own
`parse_annotation`, and tombstones stored ones Label Studio no longer has. Run by
`squeezesam labels reconcile` and before every fine-tuning run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from squeezesam.backend.labelstudio import PayloadError
from squeezesam.backend.store import Store
from squeezesam.backend.webhooks import optional_int, parse_annotation

log = logging.getLogger(__name__)


class ReconcileError(RuntimeError):
    """Label Studio could not be read; the store was not changed."""


class AnnotationSource(Protocol):
    """What reconcile needs from Label Studio."""

    def list_annotations(
        self, project_id: int
    ) -> Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]]:
        """Every current annotation of the project as (task, annotation) pairs."""
        ...


class LabelStudioSource:
    """The real source: label-studio-sdk 2.x, tasks listed with their annotations."""

    def __init__(self, base_url: str, api_key: str, page_size: int = 100) -> None:
        from label_studio_sdk import LabelStudio  # heavy import, only when reconciling

        self.client = LabelStudio(base_url=base_url, api_key=api_key)
        self.page_size = page_size

    def list_annotations(self, project_id: int) -> list[tuple[dict, dict]]:
        pairs = []
        tasks = self.client.tasks.list(project=project_id, fields="all", page_size=self.page_size)
        for task in tasks:
            # mode="json": times stay ISO strings, exactly as a webhook carries them
            t = task.model_dump(mode="json") if hasattr(task, "model_dump") else dict(task)
            for a in t.get("annotations") or []:
                pairs.append((t, a if isinstance(a, dict) else dict(a)))
        return pairs


def reconcile(store: Store, source: AnnotationSource, project_id: int) -> dict[str, int]:
    """Bring the store in line with Label Studio for one project.

    Everything is read from Label Studio first; if that fails (connection error, 5xx,
    anything) a ReconcileError is raised and the store is untouched. Then missed or newer
    annotations are stored and stored ones that Label Studio no longer has are
    tombstoned. Returns counts by outcome.
    """
    try:
        pairs = list(source.list_annotations(project_id))
    except Exception as exc:
        raise ReconcileError(
            f"reading project {project_id}'s annotations from Label Studio failed: "
            f"{type(exc).__name__}: {exc}; nothing was changed"
        ) from exc
    records = []
    for task, annotation in pairs:
        try:
            records.append(parse_annotation(annotation, task, project_id))
        except PayloadError as exc:  # one bad annotation must not stop the catch-up
            log.warning("reconcile project %s: skipping: %s", project_id, exc)
    counts = {"created": 0, "updated": 0, "duplicate": 0, "deleted": 0, "tombstoned": 0}
    for record in records:
        counts[store.save_annotation(record)] += 1
    present = {r.annotation_id for r in records} | {
        optional_int(a.get("id")) for _, a in pairs if isinstance(a, Mapping)
    }
    gone = store.annotation_ids(project_id) - present
    counts["tombstoned"] = store.mark_deleted(sorted(gone), project_id) if gone else 0
    return counts
