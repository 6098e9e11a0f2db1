"""Tests of gateway/: the webhook door."""
