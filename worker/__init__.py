"""Newsletter dispatch worker: double opt-in, weekly editions in several languages, crash-safe
throttled SMTP sending, bounce and complaint handling, metrics."""
