"""The database: engine and sessions, the models, and every query the API and the workers run, by what it is
about (tasks, events, patches, attempts, users, GitHub, metrics). Alembic revisions live in ``migrations/``."""
