"""Imported by the demo's forkserver (``multiprocessing``'s ``set_forkserver_preload``): everything a
demo run imports is loaded once there, and every worker forked from it starts warm
(:func:`mlrkit.engine.demo.preload`). Importing this module has that side effect and no other."""

from mlrkit.engine.demo import preload

preload()
