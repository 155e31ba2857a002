"""What the live Label Studio sent our backend, against the captures in
shared/labelstudio (and so against the unit tests' payload fixtures built from them): a
protocol change in Label Studio shows up here.

The bodies are those the session's recording proxy saw while test_labelstudio.py drove
its project (pytest runs this file after it, in name order); run alone, the tests fail
saying which request Label Studio never sent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import REPO
from .labelstudio_project import CONFIG

pytestmark = pytest.mark.e2e

CAPTURES = Path(
    os.environ.get("SQUEEZESAM_LS_CAPTURES", REPO.parent / "shared" / "labelstudio" / "captures")
)


def captured(pattern: str) -> list[dict]:
    files = sorted(CAPTURES.glob(pattern))
    if not files:
        pytest.fail(f"no captures {pattern} in {CAPTURES}")
    return [json.loads(f.read_text())["request"]["body"] for f in files]


def key_paths(value, prefix: str = "") -> set[str]:
    """Every key path of a JSON value (`tasks[].data.image`), lists by all their items."""
    out: set[str] = set()
    if isinstance(value, dict):
        for key, v in value.items():
            out.add(prefix + key)
            out |= key_paths(v, prefix + key + ".")
    elif isinstance(value, list):
        for v in value:
            out |= key_paths(v, prefix.rstrip(".") + "[].")
    return out


# keys whose contents depend on the data, not on the protocol: the regions (the captures
# drew other region kinds), the project's parsed label config, free-form task meta
VOLATILE = {"result", "parsed_label_config", "meta", "extra_params"}  # params: the lead's


def protocol_keys(body) -> set[str]:
    """Key paths of a body, without those below a VOLATILE key."""
    keep = set()
    for path in key_paths(body):
        parents = [seg.removesuffix("[]") for seg in path.split(".")[:-1]]
        if not VOLATILE & set(parents):
            keep.add(path)
    return keep


LIVE_VS_CAPTURED = [
    ("/setup", "", lambda b: True, "0[46]_*__ml_setup.json"),
    ("/predict", "bulk", lambda b: not (b.get("params") or {}).get("context")
     and len(b["tasks"]) > 1, "19_*__ml_predict.json"),
    ("/predict", "task open", lambda b: not (b.get("params") or {}).get("context")
     and len(b["tasks"]) == 1, "15_*__ml_predict.json"),
    ("/predict", "interactive", lambda b: bool((b.get("params") or {}).get("context")),
     "56_*__ml_predict.json"),
    ("/webhook", "ANNOTATION_CREATED", lambda b: b.get("action") == "ANNOTATION_CREATED",
     "62_*__ml_webhook.json"),
    ("/webhook", "START_TRAINING", lambda b: b.get("action") == "START_TRAINING",
     "72_*__ml_webhook.json"),
]  # fmt: skip


@pytest.mark.parametrize(
    "path,kind,pick,pattern", LIVE_VS_CAPTURED, ids=[f"{p} {k}" for p, k, *_ in LIVE_VS_CAPTURED]
)
def test_live_payloads_match_the_captures(backend, path, kind, pick, pattern, tmp_path_factory):
    """The bodies the live server sent have the keys the captures (and so the unit-test
    fixtures built from them) have: a protocol change in Label Studio shows up here."""
    live = [r["body"] for r in backend.proxy.records
            if r["path"] == path and isinstance(r["body"], dict) and pick(r["body"])]  # fmt: skip
    assert live, f"Label Studio sent no {path} {kind or ''} in this run"
    expected = set().union(*(protocol_keys(b) for b in captured(pattern)))
    got = set().union(*(protocol_keys(b) for b in live))
    missing, extra = expected - got, got - expected
    dump = tmp_path_factory.getbasetemp() / "live_payloads.json"
    dump.write_text(json.dumps(backend.proxy.records, indent=1, default=str))
    assert not missing, f"captured keys the live {path} lacks: {sorted(missing)}"
    assert not extra, f"live {path} keys the captures lack: {sorted(extra)}"


def test_the_unit_test_payload_fixtures_match_the_live_server(backend):
    """tests/backend builds interactive bodies with `click_body`/`keypoint`/`rectangle`
    (tests/backend/payloads.py):
    every key they use is one the live Label Studio sent (nothing invented)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "backend_payloads", REPO / "tests" / "backend" / "payloads.py"
    )
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    live = [r["body"] for r in backend.proxy.seen("/predict")
            if (r["body"].get("params") or {}).get("context")]  # fmt: skip
    assert live, "no interactive /predict in this run"
    made = fixtures.click_body(
        CONFIG.read_text(),
        "/data/upload/1/0badf00d-x.jpg",
        [fixtures.keypoint(50, 50, 100, 100), fixtures.rectangle(10, 10, 50, 50, 100, 100)],
    )
    live_keys = set().union(*(protocol_keys(b) for b in live))
    invented = protocol_keys(made) - live_keys
    assert not invented, f"fixture keys Label Studio does not send: {sorted(invented)}"
    # the regions are the editor's (captures 50/56), which the live run did not draw
    for region in made["params"]["context"]["result"]:
        kind = region["type"]
        capture = "56_*__ml_predict.json" if kind == "keypointlabels" else "50_*__ml_predict.json"
        [real] = [r for b in captured(capture) for r in b["params"]["context"]["result"]
                  if r["type"] == kind][:1]  # fmt: skip
        assert set(region) <= set(real), (kind, set(region) - set(real))
        assert set(region["value"]) <= set(real["value"]), (kind, region["value"])
