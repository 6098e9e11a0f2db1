"""The repository's own files: docs, deploy/, the import layers, tests' layout."""
