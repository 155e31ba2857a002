"""Cloud-storage images (`s3://`, `gs://`, `azure-blob://`), fetched through Label Studio.

A project importing from S3, GCS or Azure Blob storage hands the backend raw URIs
(`s3://team-bucket/photos/x.jpg`). Label Studio resolves one for its task at
`/tasks/<task id>/presign/?fileuri=<urlsafe base64 of the URI>` (label-studio-sdk 2.x:
`encode_presign_fileuri`; the schemes are those of its `is_cloud_storage_uri`, which are
the `url_scheme`s of Label Studio 1.23's S3, GCS and Azure Blob import storages). With
the backend's token it answers 303 to a presigned bucket URL (storage with "presign"
on) or the bytes themselves (presign off: proxied by Label Studio).

`task_ref` turns the URI into that relative path, so images.py fetches it like any Label
Studio path: the token goes to Label Studio's exact origin only, and every redirect hop
is checked by the allowlist (a presigned bucket host must be in IMAGE_ALLOWED_HOSTS).
Any other scheme stays a 422 (images.py).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import parse_qs, urlsplit

from squeezesam.backend.images import ImageError

CLOUD_SCHEMES = ("s3", "gs", "azure-blob")  # label-studio-sdk's is_cloud_storage_uri
PRESIGN = "/tasks/{task}/presign/?fileuri={fileuri}"


class CloudRefError(ValueError):
    """A cloud URI that cannot be presigned (no task id to ask Label Studio with)."""

    status = 422


def scheme_of(ref: str) -> str:
    return ref.split(":", 1)[0].strip().lower() if ":" in ref else ""


def is_cloud_uri(ref: Any) -> bool:
    return isinstance(ref, str) and scheme_of(ref) in CLOUD_SCHEMES


def presign_path(task_id: int, uri: str) -> str:
    """Label Studio's presign path for `uri` (base64 as label-studio-sdk encodes it)."""
    fileuri = base64.urlsafe_b64encode(uri.encode()).decode()
    return PRESIGN.format(task=task_id, fileuri=fileuri)


def task_ref(ref: str, task_id: Any) -> str:
    """The reference to fetch for a task's image: a cloud URI becomes the task's presign
    path; anything else is returned unchanged."""
    if not is_cloud_uri(ref):
        return ref
    if isinstance(task_id, bool) or not isinstance(task_id, int) or task_id <= 0:
        raise CloudRefError(
            f"cloud-storage image {ref!r} needs its Label Studio task id to be presigned "
            f"(got task id {task_id!r})"
        )
    return presign_path(task_id, ref)


def cloud_uri_of(ref: str) -> str | None:
    """The cloud URI a presign path stands for, or None (not a presign path)."""
    parts = urlsplit(ref)
    if not (parts.path.startswith("/tasks/") and parts.path.endswith("/presign/")):
        return None
    raw = (parse_qs(parts.query).get("fileuri") or [""])[0]
    try:
        uri = base64.urlsafe_b64decode(raw.encode()).decode()
    except (binascii.Error, ValueError):
        return None
    return uri if is_cloud_uri(uri) else None


def explain(exc: ImageError, ref: str) -> ImageError:
    """The error of a failed fetch, naming the cloud URI when it was a presign path."""
    uri = cloud_uri_of(ref)
    if uri is None:
        return exc
    return ImageError(f"cloud-storage image {uri} (via Label Studio's presign): {exc}", exc.status)
