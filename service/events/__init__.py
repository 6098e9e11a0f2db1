"""The durable account event log, its backends, and the feed subscribers follow."""
