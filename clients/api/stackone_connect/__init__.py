"""The stackone-connect contract's generated Python: `stackone_connect.v1` holds the
messages (`stackone_connect_pb2`) and the gRPC stubs (`stackone_connect_pb2_grpc`), with
their type stubs; `make proto` regenerates them from protos/stackone_connect/v1/."""
