"""The Faust shell: topics, tables, agents and web views around the pure core."""
