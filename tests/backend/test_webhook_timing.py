"""Label Studio gives a webhook 1 s (and never resends it). The very first
ANNOTATION_CREATED after a start used to pay ~1 s of imports (the SDK's brush decoder
pulls in its whole converter: nltk, pandas...) plus opening the store, on top of the
work itself; on a loaded machine that measured 1.05-2.5 s in the real-Label-Studio run.

Measured here in a fresh process (so nothing is imported or opened yet), through the
Flask test client, with real settings and a realistic 512x384 mask from the shared data.
The bound is on the CPU time of the thread that served the request
(`time.thread_time`): the web process's own work, which on an idle core is its wall
time, and which a loaded machine (the 2 cores here are shared with training) stretches
but does not change. 0.25 s is 4x the ~60 ms measured for the first webhook after the
fix; before it, the first request alone burnt ~1 s of CPU in imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
CPU_BOUND_S = 0.25

SCRIPT = r"""
import json, sys, tempfile, time
import cv2, numpy as np
from squeezesam.backend.app import create_app
from squeezesam.backend.settings import Settings

mask = cv2.imread(sys.argv[1], cv2.IMREAD_UNCHANGED)
mask = cv2.resize((mask > 0).astype(np.uint8), (512, 384), interpolation=cv2.INTER_NEAREST)
rle = json.loads(sys.argv[2])
app = create_app(Settings(data_dir=tempfile.mkdtemp(), redis_url="redis://127.0.0.1:9/0"))
client = app.test_client()
out = []
for i in (1, 2, 3):
    body = {"action": "ANNOTATION_CREATED", "project": {"id": 1},
            "task": {"id": i, "project": 1, "data": {"image": f"/data/upload/1/{i}.jpg"}},
            "annotation": {"id": i, "task": i, "project": 1, "completed_by": 1,
                           "created_at": "2026-01-01T00:00:00Z",
                           "updated_at": "2026-01-01T00:00:00Z", "lead_time": 3.0,
                           "prediction": {}, "parent_prediction": None,
                           "result": [{"id": f"r{i}", "type": "brushlabels",
                                       "from_name": "tag", "to_name": "image",
                                       "original_width": 512, "original_height": 384,
                                       "origin": "manual",
                                       "value": {"format": "rle", "rle": rle,
                                                 "brushlabels": ["Person"]}}]}}
    data = json.dumps(body)
    cpu, wall = time.thread_time(), time.perf_counter()
    response = client.post("/webhook", data=data, content_type="application/json")
    out.append({"status": response.status_code, "result": response.get_json().get("result"),
                "cpu": time.thread_time() - cpu, "wall": time.perf_counter() - wall})
out.append({"converter_imported": "label_studio_sdk.converter" in sys.modules})
print(json.dumps(out))
"""


def test_the_first_webhook_is_answered_well_within_one_second(tmp_path):
    import cv2
    import numpy as np
    from label_studio_sdk.converter.brush import mask2rle

    masks = sorted((SHARED_DATA / "coco_people_pets" / "masks").glob("*.png"))
    if not masks:
        pytest.skip(f"no shared data under {SHARED_DATA}")
    mask = cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED)
    mask = cv2.resize((mask > 0).astype(np.uint8), (512, 384), interpolation=cv2.INTER_NEAREST)
    rle = [int(v) for v in mask2rle(mask * 255)]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(masks[0]), json.dumps(rle)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    *hooks, flags = json.loads(done.stdout.strip().splitlines()[-1])
    print(hooks)
    assert [h["status"] for h in hooks] == [201, 201, 201]
    assert [h["result"] for h in hooks] == ["created"] * 3
    assert not flags["converter_imported"]  # the ~1 s import stays out of the web process
    for i, hook in enumerate(hooks, start=1):
        assert hook["cpu"] < CPU_BOUND_S, f"webhook {i}: {hook['cpu']:.3f} s CPU"
