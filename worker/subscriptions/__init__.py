"""Subscriptions: signup events, double opt-in, signup limits, tokens and what is held about a
reader."""
