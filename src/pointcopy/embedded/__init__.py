"""The embedded default: the shapes world + a tiny model that learns to point on CPU (recipe, evaluation, demo)."""
