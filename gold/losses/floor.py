"""The floor that ``-inf`` log-probabilities are clamped to before any subtraction (a leaf: the torch divergences,
the Triton kernel and the fused CPU rows all clamp with it, and none of them imports another for it).

``exp(FLOOR)`` is exactly 0 in float32 and float64, and ``FLOOR - FLOOR`` is 0: clamping ``-inf`` to it makes
zero-probability terms vanish with zero gradient, in three passes and without masks (``-inf - -inf`` would be NaN,
and a ``where`` after it would still back-propagate NaN).
"""

FLOOR = -1e30
