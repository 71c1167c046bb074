"""Editions: the folder an editor writes, checked and stored, and its renditions per language."""
