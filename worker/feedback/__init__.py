"""Feedback: bounces, complaints and unsubscribes from every source, classified, recorded and acted
on."""
