"""Sending: a send's plan, the delivery ledger, the batch loop, throttle, SMTP and the messages
themselves."""
