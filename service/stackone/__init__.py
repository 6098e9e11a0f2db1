"""The StackOne API client: typed models, typed errors, async httpx transport."""
