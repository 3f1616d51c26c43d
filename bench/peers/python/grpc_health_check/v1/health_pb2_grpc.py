from grpc_health.v1.health_pb2_grpc import *  # noqa: F401,F403
