"""Where segments go: Postgres, through a sink that reads the output topics."""
