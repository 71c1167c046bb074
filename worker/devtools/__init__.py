"""Developer tools: the demo's outbox SMTP server and the Chromium screenshot driver; never on a
production path."""
