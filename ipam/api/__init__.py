"""The REST API: HTTP in, commands out, answers after the projection committed."""
