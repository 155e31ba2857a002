"""Per-project pre-annotation settings: the "Extra params" of Label Studio's model settings.

A lead types a JSON object into *Project → Settings → Model → (the backend) → Extra
params*; Label Studio sends it as `extra_params` with every `/setup` (on connect, on
saving the model settings, and before every bulk predict; capture 04 shows the field,
null there). Keys (any other key is a 422 naming it: Label Studio 1.23 refuses to save
settings whose /setup fails, showing the message; params that turn bad later put the
backend in the Error state, the message on the model card, no predictions until fixed):

| key | value | default | effect |
| --- | --- | --- | --- |
| `labels` | list of BrushLabels names (or `"Person,Pet"`) | all | only regions of these labels |
| `min_score` | number 0..1 | 0 | regions scoring below it are dropped |
| `max_objects` | integer >= 1 | no limit | the N best-scoring regions per image |
| `zero_click` | true / false | true | false: no pre-annotation for the project |

They shape pre-annotation only (bulk `/predict`, TASKS_CREATED, `squeezesam preannotate`,
`POST /preannotate`); clicks are never filtered. The cached pre-annotations are the
unfiltered ones, so changing a param needs no new model run.

Stored in Redis (`squeezesam:project-params:<id>`, JSON, no expiry), not in the label
store: they are Label Studio's own configuration, re-sent on every `/setup`, so Redis
only keeps the latest copy where both readers already are (the web process for bulk
`/predict`, the preannotate workers for whole-project runs; the label store is not
open in the workers' hot path and holds labels, not settings). After a Redis restart
the copy is back with Label Studio's next `/setup`; a whole-project run that finds no
copy reads the project's ML backends from Label Studio's API (`preannotate_job.plan`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import redis

from squeezesam.backend.labelstudio import PayloadError, ProjectConfig, match_label

log = logging.getLogger(__name__)

KEYS = ("labels", "min_score", "max_objects", "zero_click")
OFF = "pre-annotation is off for this project (Extra params: zero_click=false)"
_TRUE, _FALSE = ("true", "on", "yes", "1"), ("false", "off", "no", "0")


@dataclass(frozen=True)
class ProjectParams:
    labels: tuple[str, ...] | None = None  # None: every label
    min_score: float = 0.0
    max_objects: int | None = None  # None: no limit
    zero_click: bool = True

    @property
    def filters(self) -> bool:
        return self.labels is not None or self.min_score > 0 or self.max_objects is not None


DEFAULT = ProjectParams()


def _bad(key: str, value: Any, want: str) -> PayloadError:
    return PayloadError(f"Extra params: {key}={json.dumps(value)} is not valid: {want}", 422)


def parse(extra: Any, config: ProjectConfig) -> ProjectParams:
    """Validate Label Studio's `extra_params` against the project's labeling config."""
    if extra is None or extra == "":
        return DEFAULT
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except ValueError as exc:
            raise PayloadError(f"Extra params are not valid JSON: {exc}", 422) from None
    if not isinstance(extra, dict):
        raise PayloadError(f"Extra params must be a JSON object like "
                           f'{{"min_score": 0.5}}, got {type(extra).__name__}', 422)  # fmt: skip
    unknown = sorted(set(extra) - set(KEYS))
    if unknown:
        raise PayloadError(f"Extra params: unknown key {unknown[0]!r} (known: "
                           f"{', '.join(KEYS)})", 422)  # fmt: skip
    given = {k: v for k, v in extra.items() if v is not None}  # null: the default
    return ProjectParams(
        labels=_labels(given.get("labels"), config),
        min_score=_number(given.get("min_score", 0.0)),
        max_objects=_count(given.get("max_objects")),
        zero_click=_flag(given.get("zero_click", True)),
    )


def _labels(value: Any, config: ProjectConfig) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _bad("labels", value, 'a non-empty list of label names, e.g. ["Person"]')
    found = []
    for name in (n.strip() for n in names):
        label = match_label(name, config.brush_labels)
        if label is None:
            raise _bad("labels", value, f"{name!r} is not a BrushLabels label of this project "
                       f"({', '.join(config.brush_labels)})")  # fmt: skip
        found.append(label)
    return tuple(dict.fromkeys(found))


def _number(value: Any) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        number = -1.0
    if not 0.0 <= number <= 1.0:
        raise _bad("min_score", value, "a number from 0 to 1")
    return number


def _count(value: Any) -> int | None:
    if value is None:
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise _bad("max_objects", value, "an integer of at least 1")
    return int(text)


def _flag(value: Any) -> bool:
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _bad("zero_click", value, "true or false")


# --- where they live ---------------------------------------------------------------------


def key(project_id: int) -> str:
    return f"squeezesam:project-params:{int(project_id)}"


def save(conn: redis.Redis, project_id: int, params: ProjectParams) -> None:
    if params == DEFAULT:
        conn.delete(key(project_id))
    else:
        conn.set(key(project_id), json.dumps(asdict(params)))


def load(conn: redis.Redis, project_id: int | None) -> ProjectParams | None:
    """The project's params as last sent by Label Studio; None when none are stored."""
    if project_id is None:
        return None
    raw = conn.get(key(project_id))
    if raw is None:
        return None
    values = json.loads(raw)
    labels = values.get("labels")
    return ProjectParams(**(values | {"labels": tuple(labels) if labels else None}))


# --- what they do ----------------------------------------------------------------------------


def filter_item(item: dict[str, Any], params: ProjectParams) -> dict[str, Any]:
    """A pre-annotation item with only the regions the params keep (their order kept);
    the task's score is again its weakest region's."""
    results = item.get("result")
    if not params.filters or not isinstance(results, list):
        return item
    keep = [
        i
        for i, r in enumerate(results)
        if float(r.get("score", 0.0)) >= params.min_score
        and (params.labels is None or _label_of(r) in params.labels)
    ]
    if params.max_objects is not None:
        best = sorted(keep, key=lambda i: -float(results[i].get("score", 0.0)))
        keep = sorted(best[: params.max_objects])
    kept = [results[i] for i in keep]
    score = min((float(r.get("score", 0.0)) for r in kept), default=0.0)
    return item | {"result": kept, "score": score}


def filter_text(text: str, params: ProjectParams) -> str:
    """`filter_item` on the JSON text of one `/predict` item (unchanged when no filter)."""
    if not params.filters:
        return text
    item = json.loads(text)
    return json.dumps(filter_item(item, params), separators=(",", ":"))


def _label_of(region: dict[str, Any]) -> str | None:
    labels = (region.get("value") or {}).get("brushlabels") or [None]
    return labels[0]
