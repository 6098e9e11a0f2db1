"""An example web app: StackOne's Hub on a page, backed by stackone-connect over gRPC."""
