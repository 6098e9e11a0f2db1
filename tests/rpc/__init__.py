"""Tests of service/rpc: the gRPC edge (auth, owner scopes, bounds, audit, streams)."""
