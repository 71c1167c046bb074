"""Operators: Prometheus metrics and the dashboard's numbers, derived on read from the ledger."""
