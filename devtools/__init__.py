"""Developer tooling shared by the end-to-end tests and ``make demo``.

Nothing here is part of the installed package: it starts real services (a throwaway PostgreSQL,
moto's S3 server) and a real Airflow 3 stack (api-server, scheduler, dag-processor, triggerer) from
the repository checkout, so that the tests and the demo exercise exactly what users run.
"""
