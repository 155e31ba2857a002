"""The round trip of docker/smoke.sh: a real Label Studio and our backend, both in containers.

Driven from the host through the published ports, the way tests/e2e drives a Label Studio
(REST API with the user's legacy token) and the way a user connects a model:

1. a project with annotation_configs/people_pets.xml and one uploaded person photo (a
   held-out `val` photo of ../shared/data, one person covering 8-60 % of it);
2. the backend connected as an interactive ML backend at
   http://web.squeezesam.internal:9090 (its alias on the compose network) with Basic
   auth, and the X-Webhook-Secret header added to the webhook Label Studio created for it
   (what docker/.env.example tells a user to do);
3. Retrieve Predictions stores a brush mask (IoU against the photo's ground truth);
4. an interactive click returns a brush mask covering it (IoU too);
5. a submitted annotation reaches /webhook and the label store (`squeezesam labels stats`
   in the web container);
6. Start Training queues a fine-tuning run on the `train` queue (and the trainer
   container takes it): Label Studio sends it to /webhook with the model's Basic auth
   and without X-Webhook-Secret, which /webhook takes in place of the secret.

Also: the published backend refuses /predict without Basic auth and /webhook without the
secret. Prints one line per step; exits non-zero on the first failure.

usage: python docker/smoke/roundtrip.py (settings from the environment; see docker/smoke.sh)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "annotation_configs" / "people_pets.xml"
ENV = os.environ
LS = ENV["SMOKE_LS_URL"]  # Label Studio as the host reaches it
BACKEND = ENV["SMOKE_BACKEND_URL"]  # our web service as the host reaches it
BACKEND_IN_NETWORK = ENV.get("SMOKE_BACKEND_URL_FOR_LS", "http://web.squeezesam.internal:9090")
TOKEN = ENV["LS_TOKEN"]
AUTH = (ENV.get("BASIC_AUTH_USER", "labelstudio"), ENV["BASIC_AUTH_PASS"])
SECRET = ENV["WEBHOOK_SECRET"]
WEB = ENV["SMOKE_WEB_CONTAINER"]  # `podman exec` target: label store, Redis
PODMAN = ENV.get("PODMAN", "podman")
SHARED = Path(ENV.get("SQUEEZESAM_SHARED_DATA", REPO.parent / "shared" / "data"))
SET = ENV.get("SMOKE_SET", "ccp_person")

http = requests.Session()
http.headers["Authorization"] = f"Token {TOKEN}"
http.trust_env = False
plain = requests.Session()  # to our backend directly, with no credentials unless given
plain.trust_env = False


def step(text: str) -> None:
    print(f"[roundtrip {time.strftime('%H:%M:%S')}] {text}", flush=True)


def api(method: str, path: str, expect=(200, 201), **kw):
    response = http.request(method, LS + path, timeout=180, **kw)
    if response.status_code not in expect:
        sys.exit(f"FAIL: {method} {path}: {response.status_code} {response.text[:500]}")
    return response.json() if response.content else None


def wait_for(predicate, timeout: float, what: str, fail: bool = True):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            if not fail:
                return value
            sys.exit(f"FAIL: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def in_web(*argv: str) -> str:
    done = subprocess.run([PODMAN, "exec", WEB, *argv], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"FAIL: podman exec {WEB} {' '.join(argv)}: {done.stderr[-800:]}")
    return done.stdout


def pick_photo() -> dict:
    """The first held-out person photo of SET with one person covering 8-60 % of it."""
    from squeezesam.models.data import load_set

    for sample in load_set(SHARED / SET):
        if sample.split != "val" or len(sample.objects) != 1:
            continue
        if sample.objects[0].label != "person":
            continue
        mask = sample.load_mask() == sample.objects[0].index
        if 0.08 <= mask.mean() <= 0.6:
            return {"image": sample.image_path, "mask": mask}
    sys.exit(f"FAIL: no val photo with one person in {SHARED / SET}")


def decode_brush(result: dict) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    h, w = result["original_height"], result["original_width"]
    return decode_rle(result["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def inner_point(mask: np.ndarray) -> tuple[int, int]:
    import cv2

    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def click(ml_id: int, task: int, photo: dict, who: str = "") -> tuple[dict, float, tuple]:
    """A positive keypoint at the object's inner point, through Label Studio's
    interactive-annotating (as the editor sends it); the brush mask must cover it."""
    h, w = photo["mask"].shape
    x, y = inner_point(photo["mask"])
    region = {
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"x": 100 * x / w, "y": 100 * y / h, "width": 0.3, "keypointlabels": ["Person"]},
        "is_positive": True,
        "id": uuid.uuid4().hex[:10],
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }
    started = time.monotonic()
    answer = api(
        "POST",
        f"/api/ml/{ml_id}/interactive-annotating",
        json={"task": task, "context": {"result": [region]}},
    )
    if "errors" in answer or not answer.get("data", {}).get("result"):
        sys.exit(f"FAIL: the click returned no mask: {str(answer)[:500]}")
    [brush] = answer["data"]["result"]
    mask = decode_brush(brush)
    if brush["type"] != "brushlabels" or not mask[y, x]:
        sys.exit(f"FAIL: the click's mask does not cover the click ({brush['type']})")
    click_iou = iou(mask, photo["mask"])
    step(
        f"{who}interactive click at ({x}, {y}): brush mask {brush['value']['brushlabels']} in "
        f"{time.monotonic() - started:.2f} s; mask IoU vs ground truth {click_iou:.3f}"
    )
    return brush, click_iou, (x, y)


def main() -> int:
    t0 = time.monotonic()
    # safe by default: the published port answers nothing useful without the secrets
    refused = plain.post(BACKEND + "/predict", json={"tasks": []}, timeout=10).status_code
    hook = plain.post(BACKEND + "/webhook", json={"action": "START_TRAINING"}, timeout=10)
    if refused != 401 or hook.status_code not in (401, 403):
        sys.exit(
            f"FAIL: backend open without auth: /predict {refused}, /webhook {hook.status_code}"
        )
    step(
        f"backend refuses /predict without Basic auth ({refused}) and /webhook without "
        f"the secret ({hook.status_code})"
    )

    photo = pick_photo()
    project = api(
        "POST",
        "/api/projects",
        json={"title": "SqueezeSAM smoke", "label_config": CONFIG.read_text()},
    )["id"]
    name = photo["image"].name
    imported = api(
        "POST",
        f"/api/projects/{project}/import",
        files={"file": (name, photo["image"].read_bytes(), "image/jpeg")},
    )
    assert imported["task_count"] == 1, imported
    tasks = api("GET", f"/api/tasks?project={project}&page_size=10")
    [task] = [t["id"] for t in (tasks["tasks"] if isinstance(tasks, dict) else tasks)]
    step(f"project {project}: people_pets.xml, task {task} = {SET}/images/{name} (val split)")

    ml = api(
        "POST",
        "/api/ml",
        json={
            "url": BACKEND_IN_NETWORK,
            "project": project,
            "is_interactive": True,
            "title": "squeezesam",
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": AUTH[0],
            "basic_auth_pass": AUTH[1],
        },
    )
    if ml["state"] != "CO":
        sys.exit(f"FAIL: the backend did not connect: {ml}")
    hooks = api("GET", f"/api/webhooks?project={project}")
    mine = [h for h in hooks if h["url"] == BACKEND_IN_NETWORK + "/webhook"]
    if len(mine) != 1:
        sys.exit(f"FAIL: Label Studio created no webhook for the model: {hooks}")
    [webhook] = mine
    api("PATCH", f"/api/webhooks/{webhook['id']}", json={"headers": {"X-Webhook-Secret": SECRET}})
    step(
        f"backend connected as {BACKEND_IN_NETWORK} with Basic auth (state {ml['state']}, "
        f"model {ml['model_version']}); webhook {webhook['id']} given X-Webhook-Secret"
    )

    started = time.monotonic()
    done = api(
        "POST",
        f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
        json={"selectedItems": {"all": False, "included": [task]}},
    )
    [stored] = wait_for(
        lambda: api("GET", f"/api/predictions?task={task}"), 60, "the stored prediction"
    )
    regions = [r for r in stored["result"] if r["type"] == "brushlabels"]
    if not regions:
        sys.exit(f"FAIL: the stored prediction has no brush mask: {stored}")
    union = np.zeros_like(photo["mask"])
    for region in regions:
        union |= decode_brush(region)
    pre_iou = iou(union, photo["mask"])
    step(
        f"Retrieve Predictions: {done.get('processed_items')} task, {len(regions)} brush "
        f"mask(s) stored by {stored['model_version']} in {time.monotonic() - started:.1f} s; "
        f"labels {sorted({lab for r in regions for lab in r['value']['brushlabels']})}; "
        f"mask IoU vs ground truth {pre_iou:.3f}"
    )

    brush, click_iou, (x, y) = click(ml["id"], task, photo)

    brush = dict(brush, id="smoke-mask", origin="manual")
    brush.pop("score", None)
    annotation = api(
        "POST",
        f"/api/tasks/{task}/annotations",
        json={"result": [brush], "lead_time": 2.0, "was_cancelled": False},
    )

    def stored_labels():
        stats = json.loads(in_web("squeezesam", "labels", "stats"))
        p = stats["projects"].get(str(project))
        return p and p["annotations"]["kept"] >= 1 and p

    p = wait_for(stored_labels, 30, "the annotation in the label store")
    step(
        f"annotation {annotation['id']} submitted: the label store (web container) holds "
        f"{p['annotations']['kept']} annotation(s), objects {p['objects']}"
    )

    api("POST", f"/api/ml/{ml['id']}/train", expect=(200, 201))
    check = (
        "import json; from rq import Queue; from squeezesam.backend.redis_conn import connect;"
        "from squeezesam.backend.settings import Settings;"
        "q = Queue('train', connection=connect(Settings.from_env()));"
        "print(json.dumps({'queued': q.count, 'started': q.started_job_registry.count,"
        " 'finished': q.finished_job_registry.count, 'failed': q.failed_job_registry.count}))"
    )

    def train_jobs():
        counts = json.loads(in_web("python", "-c", check))
        return sum(counts.values()) and counts

    counts = wait_for(train_jobs, 30, "a job on the train queue", fail=False)
    if not counts:
        # Label Studio sends START_TRAINING through its ML connector: with the model's
        # Basic auth, never with the webhook's headers (WEBHOOK_SECRET is set here).
        # Replayed so, for the failure message:
        replay = plain.post(
            BACKEND + "/webhook", auth=AUTH, timeout=30,
            json={"action": "START_TRAINING", "project": {"id": project}},
        )  # fmt: skip
        sys.exit(
            f"FAIL: Start Training queued no run; /webhook answers Label Studio's "
            f"START_TRAINING (Basic auth, no X-Webhook-Secret) with {replay.status_code} "
            f"{replay.text.strip()[:160]}"
        )
    taken = wait_for(
        lambda: (c := json.loads(in_web("python", "-c", check)))["queued"] == 0 and c,
        60,
        "the trainer container to take the run",
    )
    step(
        f"Start Training (Basic auth, WEBHOOK_SECRET set) queued a fine-tuning run: "
        f"{counts}; taken by the trainer: {taken}"
    )
    print(f"SMOKE ROUND TRIP OK in {time.monotonic() - t0:.0f} s: pre-annotation "
          f"mask IoU {pre_iou:.3f}, click mask IoU {click_iou:.3f} ({SET}/images/{name})",
          flush=True)  # fmt: skip
    return 0


def alone(url: str) -> int:
    """The serving image alone (`docker run <image>`, its default command `serve`),
    joined to the same Label Studio as a second model of the smoke project: Label Studio
    sends it a click, it downloads the photo from Label Studio with the token and answers
    with a mask."""
    projects = api("GET", "/api/projects")
    projects = projects["results"] if isinstance(projects, dict) else projects
    project = next(p["id"] for p in projects if p["title"] == "SqueezeSAM smoke")
    tasks = api("GET", f"/api/tasks?project={project}&page_size=10")
    [task] = [t["id"] for t in (tasks["tasks"] if isinstance(tasks, dict) else tasks)]
    ml = api("POST", "/api/ml", json={
        "url": url, "project": project, "is_interactive": True, "title": "squeezesam-alone",
        "auth_method": "BASIC_AUTH", "basic_auth_user": AUTH[0], "basic_auth_pass": AUTH[1],
    })  # fmt: skip
    if ml["state"] != "CO":
        sys.exit(f"FAIL: the single container did not connect: {ml}")
    step(f"single container connected as {url} (state {ml['state']}, {ml['model_version']})")
    _, click_iou, _ = click(ml["id"], task, pick_photo(), who="single container: ")
    print(f"SMOKE SINGLE CONTAINER OK: click mask IoU {click_iou:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(alone(sys.argv[2]) if sys.argv[1:2] == ["alone"] else main())
