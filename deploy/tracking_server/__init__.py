"""The team tracking server of `deploy/tracking-server`: PostgreSQL, `mlflow server`, optional logins and SeaweedFS.

One module per part, all on one server folder (`layout`): `private_files` writes and reads DIR's files,
`settings` keeps server.json, `processes` knows which processes are DIR's (psutil), `postgres`,
`mlflow_server` and `object_store` start and stop their services, `archive` backs up, restores and
upgrades, and `cli` holds the commands. The rest of the server extra (psycopg, boto3) is imported only
where it is used, so `--help` and `status` of a plain server need neither.
"""
