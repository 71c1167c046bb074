"""The web app (FastAPI): readers' pages, signup, webhooks, metrics and the dashboard."""
