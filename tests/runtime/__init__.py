"""Tests of service/runtime.py's neighbours: settings, reloading, tracing, retry."""
