"""mlrkit: multi-label image recognition when most labels are missing.

Label conventions (everywhere): ground-truth ``targets`` are uint8 [N, C] in {0, 1};
observed labels are int8 [N, C] in {+1 known positive, 0 unknown, -1 known negative}.
"""

__version__ = "0.1.0"
