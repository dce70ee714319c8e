"""Analyses of trained runs (``mlrkit analyze …``): CAM pointing game on mosaics, …"""

from mlrkit.analysis.pointing import PointingResult, attribution_stats, pointing_game, pointing_hits, pointing_of_run

__all__ = ["PointingResult", "attribution_stats", "pointing_game", "pointing_hits", "pointing_of_run"]
