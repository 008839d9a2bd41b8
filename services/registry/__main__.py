"""`python -m services.registry`: the schema registry as a process (see `main.main`)."""

from services.registry.main import main

main()
