"""Whole `serve` processes: replicas, browsers, walk-throughs, ratio checks."""
