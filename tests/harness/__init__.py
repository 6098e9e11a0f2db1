"""What the tests share: servers, processes, streams, facts (no tests here)."""
