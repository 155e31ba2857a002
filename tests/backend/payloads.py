"""Interactive /predict bodies shaped like the captured Label Studio requests.

Kept free of package-relative imports so that the e2e suite can load this file by path
and check every key it builds against what a live Label Studio sends."""

from __future__ import annotations


def click_body(label_config: str, image: str, regions: list[dict]) -> dict:
    """An interactive /predict body shaped like capture 56."""
    return {
        "tasks": [{"id": 1, "data": {"image": image}, "annotations": [], "predictions": []}],
        "project": "1.1",
        "label_config": label_config,
        "params": {"login": None, "password": None, "context": {"result": regions}},
    }


def keypoint(x: float, y: float, w: int, h: int, positive=True, label="Person") -> dict:
    return {
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.3, "keypointlabels": [label]},
        "is_positive": positive,
        "id": "kp",
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }


def rectangle(x: float, y: float, bw: float, bh: float, w: int, h: int, label="Person") -> dict:
    return {
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": bw, "height": bh, "rotation": 0,
                  "rectanglelabels": [label]},
        "id": "rc",
        "from_name": "box",
        "to_name": "image",
        "type": "rectanglelabels",
        "origin": "manual",
    }  # fmt: skip
