"""``python -m mlrkit`` (also what ``torchrun -m mlrkit`` runs)."""

from mlrkit.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
