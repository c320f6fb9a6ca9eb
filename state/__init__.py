"""Persistence: settings, database tables and engine, migrations, artifact store, event log."""
