"""Overnight: settings shared by every part, and the ``overnight`` command line."""
