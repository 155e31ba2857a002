"""Zero-click helpers: clicks per salient component."""

import numpy as np

from squeezesam.models.objects import component_clicks


def test_one_click_for_a_compact_component():
    comp = np.zeros((100, 100), bool)
    comp[40:60, 40:60] = True
    clicks = component_clicks(comp)
    assert len(clicks) == 1 and comp[int(clicks[0].y), int(clicks[0].x)]


def test_several_spread_clicks_for_an_elongated_component():
    comp = np.zeros((100, 200), bool)
    comp[40:60, 10:190] = True
    clicks = component_clicks(comp)
    assert len(clicks) >= 2
    assert all(comp[int(c.y), int(c.x)] for c in clicks)
    xs = sorted(c.x for c in clicks)
    assert xs[-1] - xs[0] > 40
