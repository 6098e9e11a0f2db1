"""Tests of service/cli: the console script."""
