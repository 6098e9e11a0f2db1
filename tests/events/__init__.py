"""Tests of service/events: the log, the inbox, the registry, the verifier, the feed."""
