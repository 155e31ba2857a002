"""`squeezesam labels ...`: the label store's commands.

    squeezesam labels export --format coco|folder --out DIR [--project ID]
    squeezesam labels stats
    squeezesam labels reconcile --project ID

Registered through backend.cli.COMMAND_MODULES (the `models` commands live with the
registry, registry.py). Heavy imports happen inside the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    labels = subparsers.add_parser("labels", help="the collected Label Studio labels")
    lsub = labels.add_subparsers(dest="labels_command", metavar="ACTION", required=True)
    export = lsub.add_parser("export", help="COCO JSON or a dataset folder")
    export.add_argument("--format", choices=("coco", "folder"), required=True)
    export.add_argument("--out", type=Path, required=True, help="folder to write into")
    export.add_argument("--project", type=int, help="only this Label Studio project")
    export.add_argument(
        "--segmentation", choices=("rle", "polygon"), default="rle", help="COCO only"
    )
    export.set_defaults(func=cmd_labels_export)
    lsub.add_parser("stats", help="counts per project (JSON)").set_defaults(func=cmd_labels_stats)
    rec = lsub.add_parser("reconcile", help="catch up with Label Studio's API for a project")
    rec.add_argument("--project", type=int, required=True)
    rec.set_defaults(func=cmd_labels_reconcile)


def _settings():
    from squeezesam.backend.settings import Settings

    return Settings.from_env()


def _store():
    from squeezesam.backend.store import Store

    return Store.open(_settings())


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def cmd_labels_export(args: argparse.Namespace) -> int:
    from squeezesam.backend import export_labels

    store = _store()
    if args.format == "coco":
        doc = export_labels.export_coco(
            store, args.out / "annotations.json", args.project, args.segmentation
        )
        print(f"{len(doc['images'])} images, {len(doc['annotations'])} objects -> "
              f"{args.out / 'annotations.json'}")  # fmt: skip
        return 0
    result = export_labels.export_folder(store, args.out, _image_loader(), args.project)
    print(json.dumps(result))
    return 1 if result["failed"] else 0


def _image_loader():
    """Fetch through the service's own fetcher (Label Studio auth, allowlist, size limits)."""
    from squeezesam.backend.images import Fetcher, decode

    settings = _settings()
    fetcher = Fetcher(settings)
    return lambda ref: decode(fetcher.fetch(ref), settings.image_max_pixels)


def cmd_labels_stats(args: argparse.Namespace) -> int:
    print(json.dumps(_store().stats(), indent=2, sort_keys=True))
    return 0


def cmd_labels_reconcile(args: argparse.Namespace) -> int:
    from squeezesam.backend.reconcile import LabelStudioSource, ReconcileError, reconcile

    settings = _settings()
    if not settings.label_studio_url or not settings.label_studio_api_key:
        return _fail(ValueError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"))
    source = LabelStudioSource(settings.label_studio_url, settings.label_studio_api_key)
    try:
        counts = reconcile(_store(), source, args.project)
    except ReconcileError as exc:
        return _fail(exc)
    print(json.dumps(counts))
    return 0
