"""The evaluation tone map of HDR data (DISCNet's SYNTH and the MIPI 2022 UDC challenge evaluate on it):
u = x/(x+0.25), and its inverse x = 0.25·u/(1−u).

Linear HDR radiance x ≥ 0 (1 = diffuse white; DISCNet SYNTH and MIPI hold [0, 500]) maps onto u in [0, 1).
Both functions work on numpy arrays and torch tensors alike, so the data readers, the simulator and the model
wrapper share one formula.
"""

from __future__ import annotations

import numpy as np

TONE_MAP = "x/(x+0.25)"  # the label datasets and model contracts carry for this tone map
KNEE = 0.25  # the radiance mapped to u = 0.5


def tone_map(x):
    """u = x / (x + 0.25) of linear HDR values x ≥ 0 (clip negatives first where they can occur)."""
    return x / (x + KNEE)


def inverse_tone_map(u, cap: float):
    """x = 0.25·u / (1 − u), with u first clipped to [0, cap]; cap < 1 bounds x (cap = tone_map(x_max))."""
    u = np.clip(u, 0.0, cap) if isinstance(u, (np.ndarray, np.generic, float, int)) else u.clamp(0.0, cap)
    return KNEE * u / (1.0 - u)
