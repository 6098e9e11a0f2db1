"""Examples of using stackone-connect; not part of the service."""
