"""Analyses of what a model attends to and whether it reads what it copies (`pointcopy analyze`)."""
