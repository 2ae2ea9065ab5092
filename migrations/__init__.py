"""The database: SQLAlchemy 2 models, the store the API and the worker share, and Alembic revisions."""
