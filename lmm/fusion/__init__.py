"""The fusion stage: raw + synthetic captions -> a fused caption field (``prompt``, ``generate``, ``parts``, ``run``)."""
