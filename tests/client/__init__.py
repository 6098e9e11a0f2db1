"""Tests of the service's clients: Python, TypeScript and the example app."""
