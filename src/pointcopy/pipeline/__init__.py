"""Data-construction pipeline stages (grounding object descriptions to boxes, ...)."""
