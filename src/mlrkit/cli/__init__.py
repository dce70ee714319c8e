"""The ``mlrkit`` command line (thin: parses arguments, builds a config, calls the library)."""
