"""The `stackone-connect` command line: `serve`, and the client commands an operator uses."""
