"""The gRPC edge: the server, the servicer, interceptors, auth, validation and statuses."""
