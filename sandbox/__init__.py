"""Isolated execution of model-written commands against a task's workspace."""
