"""Runs before `mlflow server --app-name basic-auth` (docker/entrypoint.sh): creates the auth database
when it is missing and the account the Ray nodes log in with (MLFLOW_TRACKING_USERNAME, its password
from the secret file MLFLOW_TRACKING_PASSWORD_FILE), or resets that account's password to the secret.
The admin account itself is created by MLflow from MLFLOW_AUTH_ADMIN_PASSWORD. Prints no secret."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sqlalchemy.engine import make_url


def ensure_database(uri: str) -> None:
    """PostgreSQL creates no database on connect: create the auth database, once, through the
    tracking database the server already uses."""
    url = make_url(uri)
    if not url.drivername.startswith("postgresql"):
        return  # SQLite creates its file itself
    import psycopg2  # the image installs psycopg2-binary

    conn = psycopg2.connect(host=url.host, port=url.port or 5432, user=url.username,
                            dbname=os.environ.get("PGDATABASE", "mlflow"))  # fmt: skip
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{url.database}"')
                print(f"auth_setup: created database {url.database}")
    finally:
        conn.close()


def ensure_user(db_uri: str, username: str, password: str) -> str:
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(db_uri)
    if not store.has_user(username):
        store.create_user(username, password, is_admin=False)
        return "created"
    if not store.authenticate_user(username, password):
        store.update_user(username, password=password)
        return "password reset to the secret"
    return "unchanged"


def main() -> int:
    from mlflow.server.auth.config import read_auth_config

    config = read_auth_config()
    ensure_database(config.database_uri)
    username = os.environ.get("MLFLOW_TRACKING_USERNAME", "satune")
    password_file = os.environ.get("MLFLOW_TRACKING_PASSWORD_FILE")
    if not password_file:
        print("auth_setup: no MLFLOW_TRACKING_PASSWORD_FILE; no account for the Ray nodes")
        return 0
    if username == config.admin_username:
        print(f"auth_setup: MLFLOW_TRACKING_USERNAME must not be the admin account '{username}'", file=sys.stderr)
        return 78
    state = ensure_user(config.database_uri, username, Path(password_file).read_text().strip())
    print(f"auth_setup: account '{username}' for the Ray nodes: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
