"""The measurement families of ``tools/bench.py``, one module each; ``common`` holds what they share."""
