"""The server's admin commands (``overnight up``, ``doctor``, ``image``, ``token``, ``migrate``, ``bench llm``,
``firewall``, ``eval``) and the docs generator. They read the server's settings and open the database, the broker
and the sandboxes directly; the ``overnight`` entry point imports this package only when one of them runs."""
