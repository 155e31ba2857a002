"""Finished pre-annotations in Redis, so an opened task answers without the model.

Keyed by (image reference, model version, labeling config): the same image under
another project's labels, or under a new model, is a different answer. The value is
the JSON text of one `/predict` result item, exactly as returned. Entries expire after
PREANNOTATE_CACHE_TTL; a new model version never reads an old entry.
"""

from __future__ import annotations

import hashlib

import redis

from squeezesam.backend.labelstudio import ProjectConfig

PREFIX = "squeezesam:pre:"


def key(image_ref: str, model_version: str, config: ProjectConfig) -> str:
    labels = "\x1f".join(config.brush_labels)
    raw = (
        f"{model_version}\x1e{config.brush_name}\x1e{config.image_name}\x1e{labels}\x1e{image_ref}"
    )
    return PREFIX + hashlib.sha256(raw.encode()).hexdigest()[:40]


def get(conn: redis.Redis, cache_key: str) -> str | None:
    value = conn.get(cache_key)
    return value.decode() if value is not None else None


def get_many(conn: redis.Redis, keys: list[str]) -> list[str | None]:
    if not keys:
        return []
    return [v.decode() if v is not None else None for v in conn.mget(keys)]


def put(conn: redis.Redis, cache_key: str, text: str, ttl: int) -> None:
    conn.set(cache_key, text, ex=max(1, int(ttl)))
