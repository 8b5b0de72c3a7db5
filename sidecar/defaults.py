"""Every default that config, k8s manifests, shipper configs and docs share.

One source of truth: tests check that the manifests under ``k8s/`` and the
snippets under ``fluent-plugin-config/`` use these values.
"""

LISTEN_HOST = "127.0.0.1"

FORWARD_PORT = 24224
OTLP_GRPC_PORT = 4317
GRPC_PORT = 50051
LUMBERJACK_PORT = 5044
HTTP_PORT = 8080

DATA_DIR = "/var/lib/logminer"

HASH_SECRET_ENV = "LOGMINER_HASH_SECRET"
TOKEN_STORE_KEY_ENV = "LOGMINER_TOKEN_STORE_KEY"
FORWARD_SHARED_KEY_ENV = "LOGMINER_FORWARD_SHARED_KEY"

AGGREGATOR_PORT = 24225  # the downstream Fluentd/Fluent Bit aggregator's forward input
DOWNSTREAM_SHARED_KEY_ENV = "LOGMINER_DOWNSTREAM_SHARED_KEY"

SYSLOG_TCP_PORT = 601  # RFC 6587 section 3.3 (syslog over plain TCP)
SYSLOG_TLS_PORT = 6514  # RFC 5425 section 4.1 (syslog over TLS)
WEBHOOK_TOKEN_ENV = "LOGMINER_WEBHOOK_TOKEN"
