"""The HTTP API: tasks, their events and patches, health."""
