"""Runs one task: fetch the repository, start a sandbox, drive the agent, store the patch."""
