"""The service: the only package that talks to Optuna, optuna-dashboard, Ray and SQLAlchemy.

Studies are submitted as specs, stored in Optuna storage (SQLite, PostgreSQL, journal), run as
phases by one runner on Ray workers, and shown by the report and the dashboard."""
