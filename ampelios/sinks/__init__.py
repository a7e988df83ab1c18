"""Where segments go: Postgres, through a sink that reads the output topics (history for SQL users)."""
