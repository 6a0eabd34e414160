"""The paths of one server folder (DIR): everything of one server lives under it, so several run side by side."""

from __future__ import annotations

from pathlib import Path


class Layout:
    """The paths of one server folder, from its (resolved) root."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.settings = self.root / "server.json"  # the settings of the first `up` (mode 0600, no password)
        self.postgres = self.root / "postgres"  # the `postgres` user's when run as root
        self.pgdata = self.postgres / "data"
        self.postgres_log = self.postgres / "postgres.log"
        self.artifacts = self.root / "artifacts"  # the proxied artifacts, unless an object store holds them
        self.mlflow_log = self.root / "mlflow.log"
        self.mlflow_pid = self.root / "mlflow.pid"  # the pid and start time `up` recorded
        self.secrets = self.root / "secrets"  # mode 0700: passwords, keys, certificates
        self.pgpass = self.secrets / "pgpass"
        self.pg_password = self.secrets / "postgres-password"
        self.flask_key = self.secrets / "flask-secret-key"
        self.auth_ini = self.secrets / "basic_auth.ini"
        self.optuna_password = self.secrets / "optuna-password"
        self.seaweedfs = self.root / "seaweedfs"  # --object-store: the S3 server's data and working folder
        self.weed_log = self.root / "seaweedfs.log"
        self.weed_pid = self.root / "seaweedfs.pid"
        self.s3_access_key = self.secrets / "s3-access-key"
        self.s3_secret_key = self.secrets / "s3-secret-key"
        self.s3_config = self.secrets / "s3.json"  # SeaweedFS's identities: the one key pair, admin of its S3
        # SeaweedFS's own configuration folder (its -config_dir): security.toml with the JWT signing keys and the
        # gRPC certificate, made new at each start.
        self.weed_config = self.secrets / "seaweedfs"
        self.weed_security = self.weed_config / "security.toml"
        self.weed_ca = self.weed_config / "ca.pem"
        self.weed_certificate = self.weed_config / "seaweedfs.pem"
        self.weed_key = self.weed_config / "seaweedfs-key.pem"
